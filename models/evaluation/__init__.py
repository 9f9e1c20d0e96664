"""Offline evaluation of the LLM's update strategies on a MovieLens replay (`explorer eval`, issues 6 and 12).

protocol    -- event-time split, states, point- and request-anchored cases, horizons, the hit definitions
interface   -- what a strategy sees (PointState, Snapshot) and returns (Answer: a cluster, a ranking, a distribution);
               its LLM inferences as keyed InferenceRequests
strategies  -- stale, RAG only, fine-tuning only, hybrid and the early-window fine-tune variants (pair tables)
baselines   -- random, popular, count argmax, count with back-off, the sequence recommender's own choice
inference   -- every inference in bulk: exact-prompt memo, a SQLite cache across runs, worker processes
grounding   -- the sequence model's scores per case: grounded items, its own cluster ranking
strata      -- support, retrieved-top-3 and anchor labels of each case
metrics     -- per-case outcomes, user-bootstrap intervals, paired differences
summary     -- every strategy's metrics, strata and differences to count
drift       -- top-5 next-cluster Jaccard (knowledge over time; month over month)
finetuning  -- the fine-tuning step those strategies call (models/finetune's public functions), cached
versioning  -- code version and run key
costs       -- CPU seconds of update work, refresh counts, event -> can-change-a-recommendation lag
report      -- the Markdown tables and the PNG plots

The Kafka-driving part (replay in chunks through a real worker, wait for commits and the LanceDB sync) lives in
streams/eval_pipeline.py; the run that ties everything together in streams/eval_run.py.
"""
