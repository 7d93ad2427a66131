"""Training: the LightningCLI, the LightningModule and what a pass counts, scores and checks (memory, evaluation
sets, checkpoints, random streams). Imports data, decoding and the model; never what users take home."""
