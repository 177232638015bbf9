"""The model: training (in process or on Dask), metrics, behavioural checks, registry and gate."""
