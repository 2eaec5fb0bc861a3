"""Set-affine dispatch over engine replicas (issue 12).

One engine serving every omission set pays, in decode, for the union of the layers its
batch keeps. Sending each request to a replica that serves only a group of sets keeps that
union small. `policy` decides the groups and the replica per request; it is pure Python so
that the vLLM data-parallel front end and the Ray Serve application share it.
"""

from vllm_pudding.dispatch.policy import (DispatchOptions, SetAffineDispatcher,
                                          assign_groups, group_plan)

__all__ = ["DispatchOptions", "SetAffineDispatcher", "assign_groups", "group_plan"]
