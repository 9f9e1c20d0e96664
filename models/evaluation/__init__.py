"""Offline evaluation of the LLM's update strategies on a MovieLens replay (`explorer eval`, issue 6).

protocol   -- event-time split, evaluation points, user histories and horizons, the hit definitions
metrics    -- hit rates with user-level bootstrap 95% intervals, paired differences, exploration, validity
strategies -- stale, RAG only, fine-tuning only, hybrid, and the LLM-free baselines behind one interface
finetuning -- the fine-tuning step those strategies call (wired to models/finetune's public functions)
costs      -- CPU seconds of update work, refresh counts, event -> can-change-a-recommendation lag
report     -- the Markdown table and the PNG plots

The Kafka-driving part (replay in chunks through a real worker, wait for commits and the LanceDB sync) lives in
streams/eval_pipeline.py; the run that ties everything together in streams/eval_run.py.
"""
