"""Summarise what bench/diagnostics/sitecustomize.py wrote: per step, the mean/p50/p90/max of the last N requests
(those timed under the replay: `bench.recommend_latency` times them last) and of the N after the first 5 (idle).

    python -m bench.diagnostics.request_hops $TMPDIR/explorer-request-hops-<pid>.json [--last 97]
"""

from __future__ import annotations

import argparse
import json


def spread(values: list[float]) -> str:
    ordered = sorted(values)
    return (f"mean {1000 * sum(ordered) / len(ordered):6.1f}  p50 {1000 * ordered[len(ordered) // 2]:6.1f}  "
            f"p90 {1000 * ordered[int(0.9 * len(ordered))]:6.1f}  max {1000 * ordered[-1]:6.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path")
    parser.add_argument("--last", type=int, default=97, help="requests per phase (the bench's table hits)")
    parser.add_argument("--slowest", type=float, default=0.05, help="share of the phase's requests to break down")
    args = parser.parse_args()
    with open(args.path) as source:
        samples = json.load(source)
    traces = samples.pop("traces", {})
    stalls = samples.pop("stalls", [])
    fetches = samples.pop("fetches", [])
    idle_routine = samples.pop("idle_routine", [])
    for step in sorted(samples):
        values = samples[step]
        print(f"{step:34s} idle  {spread(values[5:5 + args.last])}")
        print(f"{'':34s} under {spread(values[-args.last:])}")
    if traces:
        tail(traces, args.last, args.slowest)
    if stalls:
        stalled(stalls, traces, args.last)
    if fetches:
        fetched(fetches, idle_routine, traces, args.last)


HOPS = (("appended -> fetched in the consumer thread", None, "1_fetched_in_consumer_thread"),
        ("-> the main loop", "1_fetched_in_consumer_thread", "2_on_main_loop"),
        ("-> the agent", "2_on_main_loop", "3_handed_to_agent"),
        ("-> its handler started", "3_handed_to_agent", "3b_handler_started"),
        ("answer computed (lookup, SASRec, grounding)", "3b_handler_started", "4_answer_computed_after_append"),
        ("the durable record delivered", "4_answer_computed_after_append", "5_delivery_1_after_append"),
        ("the answer delivered", "5_delivery_1_after_append", "5_delivery_2_after_append"))


Trace = dict[str, float]


def timed_requests(traces: dict[str, Trace], last: int, needed: set[str]) -> list[tuple[str, Trace]]:
    """The `last` requests answered last (the bench's phase under the replay) that have every step in `needed`, as
    (topic:partition:offset, steps), in the order they were answered."""
    needed = needed | {"at", "6_delivered_after_append"}
    return sorted(((key, steps) for key, steps in traces.items() if needed <= steps.keys()),
                  key=lambda item: item[1]["at"])[-last:]


def appended_at(steps: Trace) -> float:
    return steps["at"] - steps["6_delivered_after_append"]


def tail(traces: dict[str, Trace], last: int, slowest: float) -> None:
    """Where the slowest requests under the replay spent their time, hop by hop, against all of them."""
    done = [steps for _, steps in timed_requests(traces, last, {end for _, _, end in HOPS})]
    ranked = sorted(done, key=lambda steps: steps["6_delivered_after_append"])
    worst = ranked[-max(1, int(len(ranked) * slowest)):]
    print(f"\nunder the replay, {len(done)} traced requests; the slowest {len(worst)} (end to end "
          f"{1000 * worst[0]['6_delivered_after_append']:.0f}-{1000 * worst[-1]['6_delivered_after_append']:.0f} ms):")
    for label, start, end in HOPS:
        def hop(steps: Trace) -> float:
            return steps[end] - (steps[start] if start else 0.0)
        print(f"  {label:40s} all: mean {1000 * sum(map(hop, done)) / len(done):6.1f} ms   slowest: mean "
              f"{1000 * sum(map(hop, worst)) / len(worst):6.1f}  each " + " ".join(f"{1000 * hop(s):.0f}" for s in worst))


def stalled(stalls: list[dict], traces: dict[str, Trace], last: int) -> None:
    """The watchdog's stalls during the timed phase under the replay, and where the main thread was after each."""
    done = [steps for _, steps in timed_requests(traces, last, set())]
    if not done:
        return
    begin, end = appended_at(done[0]), done[-1]["at"]
    during = [stall for stall in stalls if begin <= stall["at"] <= end]
    print(f"\nstalls of the watchdog thread over 10 ms during those {end - begin:.1f} s: {len(during)}, "
          f"{1000 * sum(s['late'] for s in during):.0f} ms in all")
    places: dict[str, list[float]] = {}
    for stall in during:
        main = stall["where"].get("MainThread", ["?"])
        places.setdefault(" < ".join(reversed(main[-3:])), []).append(stall["late"])
    for place, lates in sorted(places.items(), key=lambda item: -sum(item[1]))[:12]:
        print(f"  {len(lates):3d} x, {1000 * sum(lates):5.0f} ms, max {1000 * max(lates):3.0f}  main thread after: {place}")
    slow = [steps for steps in done if steps["6_delivered_after_append"] > 0.050]
    overlapping = sum(any(appended_at(steps) <= stall["at"] <= steps["at"] for stall in during) for steps in slow)
    print(f"  requests over 50 ms: {len(slow)}, of them with a stall inside their time: {overlapping}")


def fetched(fetches: list[list], idle_routine: list[list], traces: dict[str, Trace], last: int) -> None:
    """For the requests that waited longest for a fetch: the fetches in flight when they were appended."""
    done = timed_requests(traces, last, {"1_fetched_in_consumer_thread"})
    waited = sorted(done, key=lambda item: item[1]["1_fetched_in_consumer_thread"])[-10:]
    print("\nthe 10 longest waits for a fetch, and the fetches in flight at the request's append (age at the append "
          "/ duration ms, partitions; its partition: the offset fetched from, '-' when not in the fetch):")
    for key, steps in waited:
        appended = appended_at(steps)
        topic_partition, offset = key.rsplit(":", 1)
        flying = [f"{1000 * (appended - sent):.0f}/{1000 * (back - sent):.0f} ms {n}p {req.get(topic_partition, '-')}"
                  for sent, back, req, n in fetches if sent <= appended <= back]
        if not flying:  # the fetcher's routine sat idle: the last time it built no fetch before the append, and why
            before = [entry for entry in idle_routine if entry[0] <= appended]
            if before:
                at, sleep, why = before[-1]
                flying = [f"no fetch built {1000 * (appended - at):.0f} ms before (sleep {1000 * sleep:.0f} ms): {why}"]
        print(f"  waited {1000 * steps['1_fetched_in_consumer_thread']:5.1f} ms, {topic_partition} at {offset}: "
              + ", ".join(flying))


if __name__ == "__main__":
    main()
