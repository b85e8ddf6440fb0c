"""A BentoML endpoint that does no work, the yardstick of benchmarks/service_load.py: same route,
same JSON body, same kind of answer, but no validation, no model, no metrics of ours."""

from __future__ import annotations

from typing import Any

import bentoml


@bentoml.service(name="trivial", workers=1)
class Trivial:
    @bentoml.api(route="/score")
    async def score(self, instances: list[Any]) -> dict[str, Any]:
        return {"scores": [0.0] * len(instances)}
