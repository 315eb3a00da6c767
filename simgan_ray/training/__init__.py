"""Training: the run config, the GAN updates and schedule, DDP helpers, the collapse guard, metric
reports, tracking, resume state, the Ray Train worker loop (worker) and its driver (train)."""
