"""Write loadtest/flights.jsonl: the load test's pool of valid flights, drawn like real traffic.

The flights come from the synthetic sample (models.data), so airlines, flight types, months and
destinations follow the real frequencies; every other row gives the optional fields. The pool
holds distinct flights and starts with EXAMPLE_REQUEST's flights.

    python -m loadtest.make_flights

The committed pool was drawn on 2026-11-27 (2eba8b1), and every load-test figure since was measured
on it. The synthetic sample has changed since, so a new draw differs (81 of 256 flights on
2026-12-08): commit one with the figures measured on it, never alone.
"""

import argparse
import json

from loadtest.client import FLIGHTS as OUTPUT
from models.data import STATS_PATH, synthetic_frame
from models.schema import EXAMPLE_REQUEST, Flight

POOL_SIZE = 256


def pool() -> list[dict[str, object]]:
    """EXAMPLE_REQUEST's flights, then distinct synthetic ones, each checked by the API's own schema."""
    rows = synthetic_frame(json.loads(STATS_PATH.read_text()), rows=POOL_SIZE * 4, seed=7)
    flights: list[dict[str, object]] = list(EXAMPLE_REQUEST["flights"])
    for i, row in enumerate(rows.itertuples(index=False)):
        if len(flights) == POOL_SIZE:
            break
        flight: dict[str, object] = {"OPERA": row.OPERA, "TIPOVUELO": row.TIPOVUELO, "MES": int(row.MES)}
        if i % 2:
            flight["Fecha-I"] = str(row[0])[:16]
            flight["SIGLADES"] = row.SIGLADES
        if flight not in flights:
            Flight.model_validate(flight)
            flights.append(flight)
    return flights


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()  # --help prints, writes nothing
    OUTPUT.write_text("".join(json.dumps(f, ensure_ascii=False, separators=(",", ":")) + "\n" for f in pool()))
    print(f"wrote {POOL_SIZE} flights to {OUTPUT}")
