"""KServe V1 on the router's booster call: a custom kserve.Model using Booster.inplace_predict.

Runs in its own environment (kserve, xgboost-cpu, numpy only; no kpigate). Requests follow
KServe's V1 protocol, POST /v1/models/fraud:predict with {"instances": [[9 numbers]]}, feature
codes as the router computes them; the answer is {"predictions": [P(fraud)]}. One XGBoost
thread, as in the router. The harness sets KSERVE_LOGLEVEL=WARNING and turns off the latency
log line, and this script quiets uvicorn's access log (kserve's logging configuration sets it
to INFO whatever KSERVE_LOGLEVEL says: before, every request wrote an access line to stdout),
so KServe, like kpigate, writes no log line per request.

usage: python kserve_model.py MODEL_FILE HTTP_PORT
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import kserve
import numpy as np
import xgboost

NAME = "fraud"


class FraudModel(kserve.Model):  # type: ignore[misc]  # kserve is not in kpigate's environment
    def __init__(self, model_file: str) -> None:
        super().__init__(NAME)
        self.booster = xgboost.Booster()
        self.booster.load_model(model_file)
        self.booster.set_param({"nthread": 1})
        self.ready = True

    def predict(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
        rows = np.asarray(payload["instances"], dtype=np.float32)
        scores = self.booster.inplace_predict(rows, validate_features=False)
        return {"predictions": np.asarray(scores).tolist()}


def main() -> None:
    model_file, port = sys.argv[1], int(sys.argv[2])
    server = kserve.ModelServer(
        http_port=port, workers=1, enable_grpc=False, enable_latency_logging=False
    )
    # After ModelServer(), which configures logging (uvicorn.access at INFO).
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    server.start([FraudModel(model_file)])


if __name__ == "__main__":
    main()
