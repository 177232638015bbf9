"""Training on a Dask cluster (`lightgbm.dask`, a 2-worker LocalCluster) gives the in-process model's quality."""

from __future__ import annotations

import numpy as np
from distributed import Client, LocalCluster

from eta.features.definitions import model_inputs
from eta.model.training import LABEL, score, split_by_time, train_eta_model
from eta.orders.schema import delivery_minutes
from eta.orders.simulate import simulate_orders
from eta.settings import SimulationSettings, TrainingSettings
from tests.helpers import fixed_store_history


def test_local_cluster_training_matches_in_process_metrics():
    orders = simulate_orders(SimulationSettings(markets=2, stores=40, days=10, seed=31))
    frame = fixed_store_history(orders.assign(order_id=[str(i) for i in range(len(orders))], **{LABEL: delivery_minutes(orders)}))
    local = TrainingSettings(num_boost_round=80)
    split = split_by_time(frame, local)
    in_process = score(train_eta_model(split, local), split.holdout)
    # A cluster of the test's own, given by address as a production scheduler would be, so the test can ask
    # its scheduler what ran there.
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        distributed_model = train_eta_model(split, local.model_copy(update={"dask_scheduler": cluster.scheduler_address}))
        with Client(cluster) as client:
            ran = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
    assert "train_part" in ran, f"LightGBM's distributed training ran on the cluster: {ran}"
    on_dask = score(distributed_model, split.holdout)
    assert abs(on_dask["mae_min"] - in_process["mae_min"]) < 0.05 * in_process["mae_min"]
    assert abs(on_dask["interval_coverage_80"] - in_process["interval_coverage_80"]) < 0.05
    point = distributed_model.predict(model_inputs(split.holdout))[0]
    assert np.isfinite(point).all() and point.min() > 0
