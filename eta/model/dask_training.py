"""LightGBM on a Dask cluster, for training sets that outgrow one machine (`training.dask_scheduler`)."""

from __future__ import annotations

from typing import Any

import dask.array as da
import lightgbm as lgb
import numpy as np
from distributed import Client, LocalCluster

from eta.features.definitions import MODEL_FEATURES
from eta.settings import TrainingSettings


def fit_on_dask(inputs: np.ndarray, label: np.ndarray, params: dict[str, Any], config: TrainingSettings) -> lgb.Booster:
    """Train one model with `lightgbm.dask`; "local" starts a 2-worker LocalCluster for the call."""
    if config.dask_scheduler == "local":
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
            with Client(cluster) as client:
                return _fit(client, inputs, label, params, config)
    with Client(config.dask_scheduler) as client:
        return _fit(client, inputs, label, params, config)


def _fit(client: Client, inputs: np.ndarray, label: np.ndarray, params: dict[str, Any], config: TrainingSettings):
    workers = max(1, len(client.scheduler_info()["workers"]))
    chunk = int(np.ceil(len(inputs) / workers))
    features = da.from_array(inputs, chunks=(chunk, inputs.shape[1]))
    target = da.from_array(label, chunks=chunk)
    params = {k: v for k, v in params.items() if k not in ("num_threads", "verbosity")}
    model = lgb.DaskLGBMRegressor(client=client, n_estimators=config.num_boost_round, verbose=-1, **params)
    model.fit(features, target, feature_name=MODEL_FEATURES)
    return model.booster_
