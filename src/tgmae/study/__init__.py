"""tgmae.study: the paper's comparison on one command, on top of pretraining and evaluation.

- `run`: `tgmae study`, the (masking, objective, seed) grid: pretrain -> linear probe ->
  finetune -> zero-shot retrieval, plus reference rows; resumable phase by phase (its maskings
  and phase defaults: configs/study_phases.yaml, read by `cells`, which also says what makes a
  cell: the settings two cells' runs may differ in).
- `report`: `tgmae report`, the results table, findings and figures from finished runs.
- `report_html`: report.html rendered from the report's Markdown (the same sections).
- `paired`: seed-paired differences of cells, their t-intervals and verdicts.
- `attributes`: attribute probes on frozen features and the text-space action probe.
- `sanity`: the learning sanity checks (docs/sanity.md); `recon_check`: the report's
  reconstruction check, one sanity run with a fixed recipe.
- `clip`: the small CLIP trained on the synthetic set (`tgmae train-clip`).
Submodules are imported on use, so importing the package costs nothing.
"""
