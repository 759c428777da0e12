"""The same model behind plain BentoML, as its docs show a batchable API: what a user of BentoML would
write without this project's request layer, patches and monitoring (one of `make peers`' targets).

    python -m bentoml serve loadtest.bentoml_peer:PlainBentoML --port 3005

One API with adaptive batching at the service's batch size and latency bound, the project's request
model as its input (so validation is the service's), 2 workers, BentoML's defaults otherwise.
"""

import bentoml

from loadtest.apps import served
from models.schema import FlightList, Prediction

_, READER = served()  # its request model is the API's input spec, made before the class


@bentoml.service(workers=2, resources={"cpu": "2"})
class PlainBentoML:
    """Delay label and probability of each flight; concurrent requests are batched."""

    def __init__(self) -> None:
        self.predictor, self.reader = served()

    @bentoml.api(
        route="/v1/prediction", batchable=True, max_batch_size=2_048, max_latency_ms=10_000,
        input_spec=READER.request_model,
    )  # fmt: skip
    def predict(self, flights: FlightList) -> list[Prediction]:
        probabilities = self.predictor.scores(self.reader.features(flights))
        labels = self.predictor.labels(probabilities)
        return [Prediction(delay=int(d), probability=float(p)) for d, p in zip(labels, probabilities, strict=True)]
