"""tgmae.study: the paper's comparison on one command, on top of pretraining and evaluation.

- `run`: `tgmae study`, the (masking, objective, seed) grid: pretrain -> linear probe ->
  finetune -> zero-shot retrieval, plus reference rows; resumable phase by phase.
- `report`: `tgmae report`, the results table, findings and figures from finished runs.
- `attributes`: attribute probes on frozen features and the text-space action probe.
Submodules are imported on use, so importing the package costs nothing.
"""
