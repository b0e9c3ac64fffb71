"""Training one fold: the driver, the Trainer, sampling, callbacks, checks before training, processes and devices."""
