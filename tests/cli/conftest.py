"""Every CLI test runs in its own folder: commands write their default ``--out`` folders
(``rsr-out/``, ``semidiscrete-out/``, ...) into the working directory."""

import pytest


@pytest.fixture(autouse=True)
def _in_tmp_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
