"""The training-data pipeline, top to bottom: sampler (which frames each rank reads at each step), dataset (the
worker stage: read, decode, crop, depth gather), transforms/resample/augment_config (its recipe), loader
(DataLoader over a rank's stream), batch (WorkerBatch, what a worker ships; TrainBatch, what training gets) and
finish (the device stage: uint8 -> float, jitter, points, normalisation)."""
