"""mkdocs hook: the committed figures of the studies, served at the same paths as in the repository.

The pages under ``docs/`` show the figures the pipeline wrote (``results/summary_figures/*.png``, and
``results/<study>/figures/*.png`` of every other committed study). They live outside ``docs/``, so this hook
adds them to the site as ``results/...``: a page links them as ``results/summary_figures/x.png`` relative to the
docs root, and a figure that the pipeline no longer writes is a broken link (a failure under
``mkdocs build --strict``) rather than a stale copy.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

PATTERNS = ("results/summary_figures/*.png", "results/*/figures/*.png")


def on_files(files, config):
    root = Path(config.config_file_path).resolve().parent
    for pattern in PATTERNS:
        for path in sorted(root.glob(pattern)):
            rel = path.relative_to(root).as_posix()
            if files.get_file_from_path(rel) is None:
                files.append(File(rel, src_dir=str(root), dest_dir=config.site_dir, use_directory_urls=False))
    return files
