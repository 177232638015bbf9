"""Behavioural tests a model must pass before it may serve: ETAs move the way the domain says they must."""

from __future__ import annotations

import numpy as np

from eta.features.definitions import MODEL_FEATURES, outstanding_per_dasher
from eta.model.training import EtaModel

# (feature, step): adding `step` must never shorten the point ETA or either end of the range.
LONGER_NEVER_SOONER = [
    ("estimated_store_to_consumer_driving_duration", 300.0),
    ("estimated_order_place_duration", 120.0),
    ("total_items", 3.0),
    ("total_outstanding_orders", 10.0),
]


def behaviour_failures(model: EtaModel, inputs: np.ndarray) -> list[str]:
    """Names of the behaviours `model` breaks on `inputs` (model input rows); empty when it passes."""
    failures = []
    base = model.predict(inputs)
    for feature, step in LONGER_NEVER_SOONER:
        column = MODEL_FEATURES.index(feature)
        bumped = inputs.copy()
        bumped[:, column] = bumped[:, column] + step
        if feature == "total_outstanding_orders":
            # Orders per courier is derived from outstanding orders; a busier market moves both.
            onshift = inputs[:, MODEL_FEATURES.index("total_onshift_dashers")]
            bumped[:, MODEL_FEATURES.index("outstanding_per_dasher")] = outstanding_per_dasher(bumped[:, column], onshift)
        for name, before, after in zip(("point", "lower", "upper"), base, model.predict(bumped)):
            shortened = int(np.sum(after < before - 1e-9))
            if shortened:
                failures.append(f"+{step:g} {feature} shortened the {name} ETA of {shortened} of {len(inputs)} orders")
    if np.any(base[1] > base[0]) or np.any(base[2] < base[0]):
        failures.append("the range does not contain the point ETA")
    return failures
