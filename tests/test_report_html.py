"""The HTML report (``snakemake --report``): every table and figure of a study, each with a caption that names
the paper's table or figure and the study's config (workflow/rules/report.smk, mae/report/captions.py)."""

import base64
import html
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from mae.report import captions


def test_a_table_is_named_by_its_own_title(tmp_path):
    from mae.report import tables as T

    written = T.build_tables(pd.DataFrame())
    T.write_tables(written, tmp_path)
    assert [t.stem for t in written] == list(T.TABLE_STEMS)
    for t in written:
        assert captions.table_title(tmp_path / f"{t.stem}.md") == t.title
        assert re.fullmatch(r"Table \d[a-f]?: .+", t.title), t.title
    assert captions.table_title(tmp_path / "tables.md") == "Tables 1a–7: all on one page"
    (tmp_path / "notes.md").write_text("no title here\n")
    with pytest.raises(ValueError, match="notes.md"):
        captions.table_title(tmp_path / "notes.md")


def test_every_figure_has_a_title_naming_its_paper_figure():
    from mae.report import figures as F

    titles = {stem: captions.figure_title(stem) for stem in F.FIGURES}
    assert titles["fig5_masking_ratio"] == "Masking ratio (paper Fig. 5)"  # from ABLATIONS
    for stem, title in titles.items():
        assert re.search(r"\(paper Figs?\. [\d–]+\)$", title) or stem == "fig_loss_curves", (stem, title)
    assert set(captions.FIGURES) <= set(F.FIGURES)  # no title of a figure that `mae figures` no longer draws
    with pytest.raises(KeyError, match="fig_new"):
        captions.figure_title("fig_new")


def test_the_study_names_its_config_files_in_the_order_they_apply():
    overlay = Path("config/smoke.yaml").absolute()  # Snakemake holds a --configfile as an absolute path
    name = captions.study_name({"scale": "smoke (CI)"}, [overlay, "config/config.yaml"], [overlay])
    assert name == "smoke (CI): config/config.yaml + config/smoke.yaml"
    assert captions.study_name({}, ["config/config.yaml"]) == "unnamed scale: config/config.yaml"


def report_results(report: Path) -> dict:
    """The files of a Snakemake 9 HTML report: path -> its record (labels, caption as HTML, data_uri)."""
    text = report.read_text(encoding="utf-8")
    script = text.index('<script id="results">')
    start = text.index("var results = ", script) + len("var results = ")
    return json.JSONDecoder().raw_decode(text, start)[0]


def assert_report_complete(work: Path) -> None:
    """``work/results/report.html`` of the smoke study has its every table and figure, each with its caption."""
    from mae.report.tables import TABLE_STEMS

    results = report_results(work / "results/report.html")
    # the smoke study makes every table and every figure, and the report has each of them, nothing else
    tables = sorted((work / "results/tables").glob("*.md"))
    figures = sorted((work / "results/figures").glob("*.png"))
    drawn = json.loads((work / "results/figures/figures.json").read_text())
    assert {p.stem for p in tables} == {*TABLE_STEMS, "tables"}
    assert {p.stem for p in figures} == set(drawn["written"]) and not drawn["skipped"], drawn["skipped"]
    assert {p.relative_to(work).as_posix() for p in tables + figures} == {
        path for path in results if path.startswith(("results/tables/", "results/figures/"))
    }

    for path in tables + figures:
        entry = results[path.relative_to(work).as_posix()]
        if path.suffix == ".md":  # the table's own title: "**Table 1a: decoder depth.** Ours: ..."
            name = "Tables 1a–7" if path.stem == "tables" else re.match(r"\*\*(.+?)\.\*\*", path.read_text()).group(1)
            assert re.match(r"Tables? \d", name), name
        else:
            name = captions.figure_title(path.stem)
        caption = html.unescape(entry["caption"])
        assert f"<strong>{name}" in caption, (path.name, caption[:300])
        assert "smoke (CI): config/config.yaml + config/smoke.yaml" in caption, caption[:600]
        assert "mae_vit_micro_patch4" in caption, caption[:600]  # the base run's model (config/smoke.yaml)
        assert set(entry["labels"]) == {"table" if path.suffix == ".md" else "figure", "config"}
        assert base64.b64decode(entry["data_uri"].split("base64,", 1)[1]) == path.read_bytes()
