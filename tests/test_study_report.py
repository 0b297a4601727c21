"""tgmae.study.report and tgmae.study.at_chance: every figure a random guesser reaches often is
marked "at chance" in the table and named in the findings, with its band."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tgmae.evaluate.metrics import relevance_from_ids
from tgmae.evaluate.retrieval import retrieval_metrics
from tgmae.study.at_chance import pooled_band, record_band
from tgmae.study.report import aggregate, markdown_table, write_report


def _retrieval(v2t_r1: float, t2v_r1: float, videos: int = 1152, texts: int = 10, stored: bool = True) -> dict:
    """A classes-mode retrieval summary as evaluate_retrieval writes it (figures set by hand)."""
    rel = relevance_from_ids(torch.arange(videos) % texts, torch.arange(texts))
    summary = retrieval_metrics(torch.randn(videos, 4), torch.randn(texts, 4), rel, mode="classes").summary()
    summary["video_to_text"].update({"R@1": v2t_r1, "R@5": 0.505})
    summary["text_to_video"].update({"R@1": float(np.float32(t2v_r1)), "R@5": 0.3})
    if not stored:  # a record written before retrieval results carried their bands
        del summary["chance"]
    return summary


def _record(tmp_path, masking, objective, lp, seed=0, retrieval=None, ft=0.8):
    return {"masking": masking, "objective": objective, "seed": seed, "mask_ratio": 0.75, "finetune_top1": ft,
            "linear_probe_top1": lp, "retrieval": retrieval or {}, "run_dir": str(tmp_path), "num_classes": 10,
            "num_val": 1152}


def test_table_and_findings_mark_every_figure_at_chance(tmp_path):
    records = [_record(tmp_path, "tube", "mae", 0.110),
               _record(tmp_path, "tube", "mae+contrastive", 0.184, retrieval=_retrieval(0.106, 0.3))]
    rows = aggregate(records)
    table = markdown_table(rows)
    # LP 11.0 over 1,152 videos lies in 8.3-11.8%; 18.4 does not; FT 80 is far from it
    assert "| tube | 0.75 | ✓ |  | 80.0 | 11.0 (at chance) | - |" in table
    # V->T R@1 10.6 and R@5 50.5 at chance; T->V over 10 prompts: 30% (stored as float32) is in 0-30%
    assert ("| tube | 0.75 | ✓ | ✓ | 80.0 | 18.4 | 10.6 (at chance) | 50.5 (at chance) | 30.0 (at chance) | "
            "30.0 (at chance) | 1 |") in table
    report = write_report(records, tmp_path / "rep").read_text()
    assert table in report and "10.6 (at chance)" in (tmp_path / "rep" / "report.html").read_text()
    assert ("- tube mae+contrastive: V->T R@1 10.6, V->T R@5 50.5, T->V R@1 30.0, T->V R@5 30.0 at chance (95% band "
            "of a random guesser: V->T R@1 8.3-11.8% over 1152 queries; V->T R@5 47.1-52.9% over 1152 queries; "
            "T->V R@1 0.0-30.0% over 10 queries, in steps of 10.0 points; ") in report
    assert "- tube mae: LP top-1 11.0 at chance (95% band of a random guesser: LP top-1 8.3-11.8% over 1152 queries)." in report
    # a comparison whose cell is at chance says so
    assert ("- Video-text loss, tube, LP top-1: +7.4 points from 1 seed: no interval, so it cannot be told from noise "
            "(run seeds=[0,1,2]); tube mae (11.0) is at chance in LP top-1.") in report
    # the top-1 sentence uses the band, and T->V says how coarse it is
    assert ("With 1152 validation videos a random guesser's top-1 lies in 8.3-11.8% 95% of the time; 1 of 4 FT / LP "
            "means lie in that band") in report
    assert "only 10 text queries per run: they move in steps of 10.0 points, and a random ranking's R@1 lies in 0-30%." in report
    assert "through the contrastive head (only for runs that trained it)" in report  # records without align_epochs


def test_the_intro_says_retrieval_went_through_a_head_aligned_on_the_frozen_encoder(tmp_path):
    aligned = dict(_retrieval(0.25, 0.4), align_epochs=60)
    records = [_record(tmp_path, "tube", "mae", 0.2, retrieval=dict(_retrieval(0.14, 0.2), align_epochs=60)),
               _record(tmp_path, "tube", "mae+contrastive", 0.23, retrieval=aligned)]
    report = write_report(records, tmp_path / "rep").read_text()
    assert "through a video-text head aligned on the frozen encoder for 60 epochs" in report
    assert "contrastive head" not in report
    assert "| tube | 0.75 | ✓ |  | 80.0 | 20.0 | 14.0 |" in markdown_table(aggregate(records))  # MAE-only: R@k too


def test_a_mean_over_seeds_is_compared_with_the_band_of_all_its_queries(tmp_path):
    # LP 11.5% is at chance for one run of 1,152 videos, not for the mean of three (3,456 guesses)
    one = [_record(tmp_path, "tube", "mae", 0.115)]
    three = [_record(tmp_path, "tube", "mae", lp, seed=s) for s, lp in enumerate((0.114, 0.115, 0.116))]
    assert aggregate(one)[0]["chance"]["LP top-1"].contains(0.115)
    pooled = aggregate(three)[0]["chance"]["LP top-1"]
    assert pooled.n == 3 * 1152 and not pooled.contains(0.115) and pooled.contains(0.105)
    assert "11.5 ± 0.1 |" in markdown_table(aggregate(three)) and "(at chance)" not in markdown_table(aggregate(three))[:200]
    assert pooled_band(three, "LP top-1") == pooled


def test_bands_of_records_without_stored_ones(tmp_path):
    # a classes-mode record from before the bands were stored: one prompt per class, videos / texts per prompt
    old = _record(tmp_path, "tube", "mae+contrastive", 0.2, retrieval=_retrieval(0.106, 0.0, stored=False))
    new = _record(tmp_path, "tube", "mae+contrastive", 0.2, retrieval=_retrieval(0.106, 0.0))
    for header in ("V->T R@1", "V->T R@5", "T->V R@1"):
        a, b = record_band(old, header), record_band(new, header)
        assert (a.n, a.lo, a.hi) == (b.n, b.lo, b.hi) and a.p == pytest.approx(b.p, abs=1e-3)  # 115 vs 115.2 per prompt
    # caption galleries: the relevance was not recorded, so no band and no mark
    captions = dict(old, retrieval=dict(old["retrieval"], mode="captions"))
    assert record_band(captions, "V->T R@1") is None
    assert "(at chance)" not in markdown_table(aggregate([dict(captions, linear_probe_top1=0.5, finetune_top1=0.5)]))
    # the supervised reference carries no num_val: the study's is used
    scratch = {k: v for k, v in old.items() if k != "num_val"}
    assert record_band(scratch, "FT top-1") is None and record_band(scratch, "FT top-1", num_val=1152).n == 1152


def test_chance_sentence_counts_the_means_in_the_band(tmp_path):
    def rec(masking, lp):
        return dict(_record(tmp_path, masking, "mae", lp, ft=0.1), num_val=100)

    # 100 videos, p = .1: a guesser's top-1 lies in 5-16%; 0.15 and 0.05 and FT 0.1 lie in it, 0.4 does not
    near = write_report([rec("tube", 0.15), rec("tgm", 0.05)], tmp_path / "a").read_text()
    assert "top-1 lies in 5.0-16.0% 95% of the time; 4 of 4 FT / LP means lie in that band" in near
    assert "no condition is distinguishable from chance" in near
    far = write_report([rec("tube", 0.15), rec("tgm", 0.4)], tmp_path / "b").read_text()
    assert "3 of 4 FT / LP means" in far and "distinguishable" not in far


def _study_run(root, name="tube__mae__s0", recon=True):
    """A finished study cell under `root`/runs with its record, pretraining metrics and figure."""
    import json

    run = root / "runs" / name
    (run / "pretrain").mkdir(parents=True)
    (run / "pretrain" / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 1.0 / (s + 1), "loss_mse": 1.0 / (s + 1)}) + "\n" for s in range(6)))
    if recon:
        (run / "pretrain" / "reconstruction.png").write_bytes(b"\x89PNG")
    record = {"masking": "tube", "objective": "mae", "seed": 0, "mask_ratio": 0.75, "finetune_top1": 0.5,
              "linear_probe_top1": 0.2, "retrieval": {}, "run_dir": str(run), "num_classes": 10,
              "total_seconds": 12.5}
    (run / "study_record.json").write_text(json.dumps(record))
    _results(run, "finetune", "finetune_results.json", {"val_top1": 0.5})  # the figures' sources
    _results(run, "probe", "probe_results.json", {"top1": 0.2})
    return run


def test_report_of_a_moved_study_reads_its_figures_where_the_records_are(tmp_path):
    """`tgmae report STUDY` of a study folder moved elsewhere: curves and reconstructions come from
    where the records were found, never from the recorded (old) run_dir, which may hold another study."""
    import json
    import shutil

    from tgmae.study.report import report_runs

    old = tmp_path / "old"
    _study_run(old)
    report_runs([old], old)  # the study's own report, in its folder
    moved = tmp_path / "moved"
    shutil.move(old, moved)
    _study_run(old, recon=False)  # the old place now holds another study, without a reconstruction
    report = report_runs([moved], moved).read_text()  # the moved study's own report: rewritten
    assert "](runs/tube__mae__s0/pretrain/reconstruction.png)" in report and "](loss_curves.png)" in report
    assert "old" not in report
    assert json.loads((moved / "results.json").read_text())[0]["run_dir"] == str(moved / "runs" / "tube__mae__s0")


def test_report_names_a_missing_figure(tmp_path, caplog):
    """A run whose reconstruction (or loss log) is gone is said in the report and the log, not dropped."""
    from tgmae.study.report import report_runs

    run = _study_run(tmp_path / "study", recon=False)
    (run / "pretrain" / "metrics.jsonl").unlink()
    with caplog.at_level("WARNING", logger="tgmae"):
        report = report_runs([tmp_path / "study"], tmp_path / "rep").read_text()
    for name in ("reconstruction.png", "metrics.jsonl"):  # the report's paths are relative to it, as its links
        assert f"- ../study/runs/tube__mae__s0/pretrain/{name}" in report and str(run / "pretrain" / name) in caplog.text


def test_report_into_a_run_or_over_a_users_results_json_is_refused_naming_it(tmp_path):
    """issue 28: `tgmae report STUDY --out runs/pt` wrote report.md / results.json into the run,
    exit 0; a user's results.json was called "a report of other runs (1, e.g. None)"."""
    import json

    from tgmae.errors import UserError
    from tgmae.study.report import ReportFolderError, report_runs

    study = tmp_path / "study"
    _study_run(study)
    run = tmp_path / "runs" / "pt"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {}\n")
    for out in (run, run / "checkpoints", run / "report"):
        with pytest.raises(UserError, match=f"^{out}"):
            report_runs([study], out)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml"]
    mine = tmp_path / "mine"
    mine.mkdir()
    for text in ('{"accuracy": 0.9}', '[{"accuracy": 0.9}]', "not json"):
        (mine / "results.json").write_text(text)
        with pytest.raises(ReportFolderError, match="not a study report's") as e:
            report_runs([study], mine)
        assert str(mine / "results.json") in str(e.value) and "None" not in str(e.value)
        assert (mine / "results.json").read_text() == text
    report_runs([study], mine, overwrite=True)
    assert json.loads((mine / "results.json").read_text())[0]["masking"] == "tube"


def test_report_refusing_an_out_folder_is_a_file_problem_not_a_config_error(tmp_path, capsys):
    """Issue 28 (F): `tgmae report --out DIR` with a user's results.json in DIR (or another study's
    report) printed "config error: ..."; no key is wrong, a file is in the way: the line names it
    without that prefix, exit 2."""
    from tgmae.cli import main

    study = tmp_path / "study"
    _study_run(study)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.json").write_text('{"accuracy": 0.9}')
    assert main(["report", str(study), "--out", str(mine)]) == 2
    err = capsys.readouterr().err
    assert str(mine / "results.json") in err and "config error" not in err and err.count("\n") == 1, err


def _results(run, phase, name, value):
    """A phase's results JSON under a study run (what the record's figure was read from)."""
    import json

    (run / phase).mkdir(parents=True, exist_ok=True)
    (run / phase / name).write_text(json.dumps(value))


def test_report_leaves_out_figures_whose_results_are_gone_or_damaged(tmp_path, caplog):
    """Issue 28 re-trial 13 (S1): `tgmae report` of a study whose tube finetune folder was deleted
    and whose tgm probe_results.json was damaged showed both figures from the study records, exit 0,
    no word. Each figure whose results file is gone or unreadable is left out ("-"), and the run and
    file are named in the report and the log; the other figures stay."""
    import json

    from tgmae.study.report import report_runs

    study = tmp_path / "study"
    tube = _study_run(study)
    tgm = _study_run(study, "tgm__mae__s0")
    record = json.loads((tgm / "study_record.json").read_text())
    (tgm / "study_record.json").write_text(json.dumps(dict(record, masking="tgm", mask_ratio=0.6)))
    report = report_runs([study], tmp_path / "all").read_text()
    assert "| tube | 0.75 | ✓ |  | 50.0 | 20.0 |" in report and "Missing results" not in report
    import shutil

    shutil.rmtree(tube / "finetune")
    (tgm / "probe" / "probe_results.json").write_text('{"top1": ')
    with caplog.at_level("WARNING", logger="tgmae"):
        report = report_runs([study], tmp_path / "rep").read_text()
    assert "| tube | 0.75 | ✓ |  | - | 20.0 |" in report and "| tgm | 0.6 | ✓ |  | 50.0 | - |" in report
    for run, name in ((tube, "finetune/finetune_results.json"), (tgm, "probe/probe_results.json")):
        assert f"../study/runs/{run.name}/{name}" in report and str(run / name) in caplog.text
    saved = {r["masking"]: r for r in json.loads((tmp_path / "rep" / "results.json").read_text())}
    assert saved["tube"]["finetune_top1"] is None and saved["tgm"]["linear_probe_top1"] is None


def test_a_study_rerun_recomputes_a_phase_whose_results_are_gone(tmp_path, monkeypatch):
    """S1's other half: a finished cell whose finetune_results.json is gone or damaged is not "done":
    the study reruns that phase, and its record takes the new figure."""
    import json

    import tgmae.evaluate.finetune as ft
    from tgmae.study.run import StudyConfig, StudyPaths, run_cell

    paths = StudyPaths(tmp_path / "study")
    (paths.data).mkdir(parents=True)
    (paths.data / "meta.json").write_text(json.dumps({"classes": ["a", "b"]}))
    run = paths.run("scratch", "supervised", 0)
    run.mkdir(parents=True)
    (run / "study_record.json").write_text(json.dumps({"masking": "scratch", "objective": "supervised", "seed": 0,
                                                       "finetune_top1": 0.15, "run_dir": str(run)}))
    calls = []

    def finetune(cfg):
        calls.append(cfg.train.output_dir)
        _results(run, "finetune", "finetune_results.json", {"val_top1": 0.7})

    monkeypatch.setattr(ft, "finetune", finetune)
    study = StudyConfig(references=["scratch"], recon_check_steps=0)
    for damaged in (None, '{"val_top1": '):
        if damaged is not None:
            (run / "finetune" / "finetune_results.json").write_text(damaged)
        assert run_cell(study, paths, "scratch", "supervised", 0, quick=True)["finetune_top1"] == 0.7
    assert calls == [str(run / "finetune")] * 2
    assert run_cell(study, paths, "scratch", "supervised", 0, quick=True)["finetune_top1"] == 0.7 and len(calls) == 2


def test_report_of_a_moved_study_keeps_its_text_probe(tmp_path):
    """Issue 28 re-trial 13 (M2): `tgmae report STUDY` left out the study's "Text probe: ..." line;
    it is read from the study folder where the records are, and names the word encoder there (the
    study moved since)."""
    import json
    import shutil

    from tgmae.hub import weights_fingerprint
    from tgmae.study.report import report_runs

    old = tmp_path / "old"
    _study_run(old)
    (old / "word_encoder").mkdir()
    (old / "word_encoder" / "model.safetensors").write_bytes(b"weights")
    probe = {"action": 0.55, "action_classes": 10, "num_train": 60, "num_val": 60}
    (old / "text_probe.json").write_text(json.dumps({
        "model": str(old / "word_encoder"), "weights": weights_fingerprint(str(old / "word_encoder")),
        "text_model": probe, "bag_of_words": dict(probe, action=0.933)}))
    moved = tmp_path / "moved"
    shutil.move(old, moved)
    report = report_runs([moved], tmp_path / "rep").read_text()
    assert "Text probe:" in report and "for 55.0% of 60 held-out captions" in report
    assert str(moved / "word_encoder") in report and str(old) not in report


def test_report_refuses_two_records_of_one_cell_and_seed_naming_both_folders(tmp_path, capsys):
    """Issue 28 re-trial 17A (S1): `tgmae report S S` and `tgmae report COPY S` (a study and its copy)
    counted seed 0 of every cell twice: each row "| 2" seeds, ± 0.0, chance bands narrowed, exit 0. Two
    records of one (masking, objective, variant, seed) are refused in one line naming both folders."""
    import shutil

    from tgmae.cli import main
    from tgmae.errors import UserError
    from tgmae.study.report import report_runs

    study = tmp_path / "study"
    _study_run(study)
    copy = tmp_path / "copy"
    shutil.copytree(study, copy)
    for runs, first, second in (([study, study], study, study), ([copy, study], copy, study)):
        with pytest.raises(UserError, match="seed 0") as e:
            report_runs(runs, tmp_path / "rep")
        for folder in (first, second):
            assert str(folder / "runs" / "tube__mae__s0") in str(e.value)
        assert not (tmp_path / "rep").exists()
    assert main(["report", str(copy), str(study), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config error" not in err and str(copy / "runs" / "tube__mae__s0") in err
    report_runs([study / "runs" / "tube__mae__s0"], tmp_path / "one")  # one record of the cell: reported


def test_report_of_a_partly_finished_study_names_its_unfinished_cells(tmp_path, capsys, caplog):
    """Issue 28 re-trial 17A (S5): `tgmae report` of a study killed after 6 of 10 cells said nothing
    of the rest: 6 rows, "The 6 runs took ...", exit 0, though runs/tgm__mae__s0 held an unfinished
    run. Run folders without a study_record.json are named in the report (a "Not finished" section
    and its opening paragraph, so the HTML too), the log and the command's printed lines."""
    from tgmae.study.report import report_runs

    study = tmp_path / "study"
    _study_run(study)
    (study / "runs" / "tgm__mae__s0" / "pretrain" / "checkpoints").mkdir(parents=True)
    (study / "runs" / "scratch__supervised__s0").mkdir()
    (study / "runs" / "notes").mkdir()  # not a cell's folder
    with caplog.at_level("WARNING", logger="tgmae"):
        report = report_runs([study], tmp_path / "rep").read_text()
    printed = capsys.readouterr().out
    assert "## Not finished" in report and "2 run folders" in report.split("\n\n")[1]
    for name in ("tgm__mae__s0", "scratch__supervised__s0"):
        assert f"- ../study/runs/{name}" in report and str(study / "runs" / name) in printed
        assert str(study / "runs" / name) in caplog.text
    assert "notes" not in report and "not finished" in printed.lower()
    assert "not finished" in (tmp_path / "rep" / "report.html").read_text().lower()
    one = report_runs([study / "runs" / "tube__mae__s0"], tmp_path / "one").read_text()  # one run asked for
    assert "Not finished" not in one and "tgm__mae" not in one
    (study / "runs" / "tgm__mae__s0" / "pretrain" / "checkpoints").rmdir()
    done = report_runs([tmp_path / "study"], tmp_path / "rep2").read_text()
    assert "tgm__mae__s0" in done and "scratch__supervised" in done  # empty folders are still cells not done


def test_a_cell_resumed_after_its_phases_ran_keeps_their_time(tmp_path, monkeypatch):
    """Issue 28 re-trial 17A: a cell killed after its phases ran but before its study_record.json
    was reused on rerun with pretrain_seconds ~3.5e-05, so the report's summed run time undercounted.
    A phase's seconds are kept in the cell's folder as it ends and counted by a later invocation that
    finds it done (a fake clock: 100 s of finetuning)."""
    import json

    import tgmae.evaluate.finetune as ft
    import tgmae.study.run as study_run
    from tgmae.study.run import StudyConfig, StudyPaths, run_cell

    now = [0.0]
    monkeypatch.setattr(study_run.time, "perf_counter", lambda: now[0])
    paths = StudyPaths(tmp_path / "study")
    paths.data.mkdir(parents=True)
    (paths.data / "meta.json").write_text(json.dumps({"classes": ["a", "b"]}))
    run = paths.run("scratch", "supervised", 0)

    def finetune(cfg):
        now[0] += 100.0
        _results(run, "finetune", "finetune_results.json", {"val_top1": 0.7})

    monkeypatch.setattr(ft, "finetune", finetune)
    study = StudyConfig(references=["scratch"], recon_check_steps=0)
    assert run_cell(study, paths, "scratch", "supervised", 0, quick=True)["total_seconds"] == 100.0
    (run / "study_record.json").unlink()  # killed after the finetuning, before its record
    now[0] += 5.0
    assert run_cell(study, paths, "scratch", "supervised", 0, quick=True)["total_seconds"] == 100.0


def _html_text(page: str) -> tuple[list[str], str, str]:
    """(the headings h1-h6 in order, the visible text with whitespace collapsed, every img src) of an HTML page."""
    from html.parser import HTMLParser

    class Reader(HTMLParser):
        def __init__(self):
            super().__init__()
            self.headings, self.text, self.srcs, self.heading = [], [], [], None

        def handle_starttag(self, tag, attrs):
            self.text.append(" ")
            if tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
                self.heading = []
            self.srcs += [v for k, v in attrs if tag == "img" and k == "src"]

        def handle_endtag(self, tag):
            self.text.append(" ")
            if tag in ("h1", "h2", "h3", "h4", "h5", "h6") and self.heading is not None:
                self.headings.append(" ".join("".join(self.heading).split()))
                self.heading = None

        def handle_data(self, data):
            if self.heading is not None:
                self.heading.append(data)
            if self.lasttag not in ("style", "title"):
                self.text.append(data)

    reader = Reader()
    reader.feed(page)
    return reader.headings, " ".join("".join(reader.text).split()), " ".join(reader.srcs)


def _missing_from_html(md: str, page: str) -> list[str]:
    """What report.md says that report.html does not: a heading not in the HTML's headings (in the same
    order), a paragraph, list item or table cell not in its text, a figure not among its images."""
    import re

    headings, text, srcs = _html_text(page)
    md_headings = [line.lstrip("#").strip() for line in md.splitlines() if re.match(r"#+ ", line)]
    missing = [] if md_headings == headings else [f"headings {md_headings} != {headings}"]
    for line in md.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or re.fullmatch(r"\|(-+\|)+", line):
            continue
        if image := re.fullmatch(r"!\[(.*)\]\((.*)\)", line):
            missing += [] if image[2] in srcs else [line]
            continue
        parts = line.strip("|").split("|") if line.startswith("|") else [line.removeprefix("- ")]
        missing += [p for p in (" ".join(p.split()) for p in parts) if p and p not in text]
    return missing


def test_report_html_says_everything_report_md_says(tmp_path):
    """Re-trial 23A (M1): report.html lacked report.md's findings, chance and attribute sections (and
    more), so a reader of the HTML got a thinner report without a word. Every heading, paragraph, list
    item, table cell and figure of a report with every section is in the HTML; the check itself finds
    a section left out of the HTML."""
    import json

    runs = tmp_path / "study" / "runs"
    records = []
    for masking in ("tube", "tgm"):
        for objective, bonus in (("mae", 0.0), ("mae+contrastive", 0.06)):
            for seed in (0, 1):
                run = runs / f"{masking}__{objective}__s{seed}"
                (run / "pretrain").mkdir(parents=True)
                (run / "pretrain" / "reconstruction.png").write_bytes(b"\x89PNG")
                rec = _record(run, masking, objective, 0.2 + bonus + 0.01 * seed, seed=seed,
                              retrieval=_retrieval(0.106, 0.3) if "contrastive" in objective else None)
                rec.update(probe="lbfgs", total_seconds=30.0, attentive_probe_top1=0.3 + bonus, knn_top1=0.15,
                           probe_seconds={"attentive": 4.0, "knn": 1.0},
                           attribute_probe={"action": 0.1, "colour": 0.4 + bonus, "shape": 0.2 + seed / 100,
                                            "action_classes": 10, "colour_classes": 8, "shape_classes": 7})
                records.append(rec)
    records.append(dict(_record(runs / "none__none__s0", "none", "none", 0.105), finetune_top1=None, probe="lbfgs"))
    (runs / "tgm__mae__s2").mkdir()  # unfinished
    check = tmp_path / "study" / "reconstruction_check"
    check.mkdir()
    (check / "reconstruction_check.png").write_bytes(b"\x89PNG")
    (check / "reconstruction_check.json").write_text(json.dumps({
        "figure": "reconstruction_check.png", "steps": 8, "cpu_s": 1.5, "mse": 0.0123, "patch_mean_mse": 0.0234,
        "visible_mean_mse": 0.0345, "copy_mse": 0.0456, "ratio": 0.53}))
    probe = {"action": 0.55, "action_classes": 10, "num_train": 60, "num_val": 60}
    out = tmp_path / "rep"
    md = write_report(records, out, title="a study", seconds=90.0, recon_check=check / "reconstruction_check.json",
                      text_probe={"model": "word_encoder", "text_model": probe, "bag_of_words": dict(probe, action=0.9)},
                      lost=[runs / "tgm__mae__s1" / "probe" / "probe_results.json"],
                      unfinished=[runs / "tgm__mae__s2"]).read_text()
    page = (out / "report.html").read_text()
    for heading in ("## Findings: beyond noise?", "## What the features encode", "## Frozen-backbone probes",
                    "## Does the video-text loss help the linear probe?", "## Not finished", "## Missing results",
                    "## Missing figures", "## Reconstruction check", "## Reconstruction: tube mae"):
        assert heading in md  # the fake results reach every section
    assert "Text probe:" in md and "random guesser's top-1 lies in" in md and "(at chance)" in md
    assert _missing_from_html(md, page) == []
    assert page.startswith("<!doctype html>") and "<style>" in page  # self-contained, figures linked
    findings = page.index("Findings: beyond noise?")
    cut = page[:page.rindex("<h2", 0, findings)] + page[page.index("<h2", findings):]
    left_out = _missing_from_html(md, cut)
    assert left_out and "Findings: beyond noise?" in left_out[0] and any("Video-text loss, tube" in x for x in left_out)


def _phase_config(run, phase, **changes):
    """A phase's config.yaml under `run` as a study writes it: absolute paths into its own study folder,
    the cell's seed; `changes` {"section.key": value} on top."""
    import yaml

    study = run.parent.parent
    cfg = {"data": {"root": str(study / "data"), "cache_dir": str(study / "clip_cache"), "num_workers": 0},
           "captions": {"file": str(study / "data" / "captions.jsonl"), "text_model": str(study / "word_encoder")},
           "model": {"preset": "micro", "pretrained": str(run / "pretrain" / "model.safetensors")},
           "optim": {"lr": 0.001}, "train": {"seed": int(run.name.split("__s")[-1].split("__")[0]), "epochs": 1,
                                             "output_dir": str(run / phase), "device": "cpu"}}
    for key, value in changes.items():
        section, name = key.split(".")
        cfg.setdefault(section, {})[name] = value
    (run / phase).mkdir(parents=True, exist_ok=True)
    (run / phase / "config.yaml").write_text(yaml.safe_dump(cfg))


def test_report_refuses_a_cell_whose_runs_had_other_settings_naming_the_keys(tmp_path, capsys):
    """Re-trial 31A S1: `tgmae report A C` of two studies, C with `pretrain+=[optim.lr=0.01]` (and seed 1),
    put both runs in one row as "2 seeds" (mean ± std) and named only the retrieval head's epochs. Runs of
    one cell that differ in anything but the seed (and where their study lies) are refused in one line
    naming the keys and both folders; the same recipe in two studies is still one cell of two seeds."""
    import json

    from tgmae.cli import main
    from tgmae.config import ConfigError
    from tgmae.study.report import report_runs

    a, c, b = _study_run(tmp_path / "a"), _study_run(tmp_path / "c", name="tube__mae__s1"), None
    record = json.loads((c / "study_record.json").read_text())
    (c / "study_record.json").write_text(json.dumps(dict(record, seed=1)))
    for run in (a, c):
        _phase_config(run, "probe")
    _phase_config(a, "pretrain")
    _phase_config(c, "pretrain", **{"optim.lr": 0.01, "train.device": "cuda"})  # the device is not the recipe
    with pytest.raises(ConfigError, match=r"pretrain optim\.lr: 0\.001 -> 0\.01") as e:
        report_runs([tmp_path / "a", tmp_path / "c"], tmp_path / "rep")
    assert str(a) in str(e.value) and str(c) in str(e.value) and "device" not in str(e.value)
    assert not (tmp_path / "rep").exists()
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "c"), "--out", str(tmp_path / "rep")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    _phase_config(c, "pretrain", **{"train.device": "cuda"})  # one recipe, two studies: two seeds of one cell
    b = _study_run(tmp_path / "b", name="tube__mae__s2")
    (b / "study_record.json").write_text(json.dumps(dict(record, seed=2, run_dir=str(b))))
    (b / "retrieval_aligned").mkdir()
    for run, epochs in ((a, 1), (b, 3)):  # retrieval through heads aligned for other epochs: not one cell either
        rec = json.loads((run / "study_record.json").read_text())
        rec["retrieval"] = {"align_epochs": epochs, "prompts": "descriptions", "video_to_text": {"R@1": 0.1}}
        (run / "study_record.json").write_text(json.dumps(rec))
        (run / "retrieval_aligned" / "retrieval_results.json").parent.mkdir(exist_ok=True)
        (run / "retrieval_aligned" / "retrieval_results.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"retrieval align_epochs: 1 -> 3"):
        report_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "rep")
    report = report_runs([tmp_path / "a", tmp_path / "c"], tmp_path / "rep").read_text()
    assert "| tube |" in report and report.split("| tube |")[1].split("\n")[0].endswith("| 2 |")


def _cell(study, masking, objective, seed, lr=0.001, variant="", **pretrain):
    """A finished cell of `study` as `tgmae.study.run` writes it: its record, and its phases' configs with
    the cell's own pretraining settings (`cells.pretrain_cell_overrides`) at pretraining lr `lr`; the
    "scratch" reference finetunes from random weights for its own budget and has no pretraining or probe."""
    import json

    from tgmae.config import parse_override
    from tgmae.study.cells import pretrain_cell_overrides

    name = f"{masking}__{objective.replace('+', '_')}__s{seed}" + (f"__{variant.replace(' ', '_')}" if variant else "")
    run = _study_run(study, name=name)
    record = json.loads((run / "study_record.json").read_text())
    record.update(masking=masking, objective=objective, seed=seed, variant=variant,
                  mask_ratio=None if objective in ("none", "supervised") else 0.6 if masking == "tgm" else 0.75)
    (run / "study_record.json").write_text(json.dumps(record))
    if masking == "scratch":
        _phase_config(run, "finetune", **{"model.pretrained": "", "train.epochs": 12})
        return run
    cell = {".".join(k): v for k, v in map(parse_override, pretrain_cell_overrides(masking, objective,
                                                                                   study / "similarity_cache"))}
    _phase_config(run, "pretrain", **{"optim.lr": lr, **cell, **pretrain})
    for phase in ("probe", "finetune"):
        _phase_config(run, phase)
    return run


def test_report_refuses_cells_of_other_recipes_side_by_side_naming_the_keys(tmp_path, capsys):
    """Re-trial 31A S1, left open: `tgmae report` of tube from study A (pretraining lr 0.001) and mgm from
    study C (lr 0.01) put both rows side by side, with deltas and "best" marks that compared recipes, not
    maskings. Runs of one report (of one variant) may differ only in what makes their cells
    (`cells.cell_defined_keys`: masking, objective, the scratch reference's finetuning), the seed and
    where they ran; anything else is refused naming the keys and two runs. One study's own cells, and two
    studies of one recipe (other seeds), report as before; a study of another recipe under a variant name
    reports beside them in rows of its own."""
    import shutil

    from tgmae.cli import main
    from tgmae.config import ConfigError
    from tgmae.study.report import report_runs

    a, b, c, d = (tmp_path / n for n in "abcd")
    for seed, study in ((0, a), (1, b)):  # one recipe, two seeds: tube, mgm, TGM + contrastive, the references
        for masking, objective in (("tube", "mae"), ("mgm", "mae"), ("tgm", "mae+contrastive"),
                                   ("none", "none"), ("scratch", "supervised")):
            _cell(study, masking, objective, seed)
    report = report_runs([a], tmp_path / "rep_a").read_text()
    assert "| tube |" in report and "| mgm |" in report and "| tgm |" in report
    report = report_runs([a, b], tmp_path / "rep_ab").read_text()
    assert report.split("| mgm |")[1].split("\n")[0].endswith("| 2 |")
    mgm_c = _cell(c, "mgm", "mae", 1, lr=0.01)
    with pytest.raises(ConfigError, match=r"pretrain optim\.lr: 0\.001 -> 0\.01") as e:
        report_runs([a / "runs" / "tube__mae__s0", c], tmp_path / "rep_ac")
    said = str(e.value)
    assert str(a / "runs" / "tube__mae__s0") in said and str(mgm_c) in said and "tube mae" in said and "mgm mae" in said
    assert "masking" not in said.replace(str(tmp_path), "")  # what the rows compare is not named
    assert not (tmp_path / "rep_ac").exists()
    assert main(["report", str(a), str(c), "--out", str(tmp_path / "rep_ac")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    # a masking key both cells are given alike (ratio 0.75) is the recipe, not the cell
    _cell(d, "mgm", "mae", 1, **{"masking.ratio": 0.9})
    with pytest.raises(ConfigError, match=r"tube mae\) and .* \(mgm mae\) differ in more than their cells "
                                          r"\(pretrain masking\.ratio: 0\.75 -> 0\.9\)"):
        report_runs([a / "runs" / "tube__mae__s0", d], tmp_path / "rep_ad")
    # the way out the message names: study C under a variant name, its rows of their own
    for run in (mgm_c, d / "runs" / "mgm__mae__s1"):
        shutil.rmtree(run)
    _cell(c, "mgm", "mae", 1, lr=0.01, variant="lr 0.01")
    report = report_runs([a, c], tmp_path / "rep_ac").read_text()
    assert "| mgm [lr 0.01] |" in report and "| tube |" in report
