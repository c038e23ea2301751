"""MedNeXt's default int8 files (segmenter and classifier) from a short run, in headless Chromium
as in LiteRT: the check of `test_web_families.py`, in a module of its own so that another test
process runs it beside the other families'."""

import pytest
from test_web_families import check_in_the_browser, make_short_runs

from keras_litenext.web import check as C

pytestmark = pytest.mark.skipif(C.missing() is not None, reason=str(C.missing()))

SHORT_RUNS = {"mednext_seg-t": 32, "mednext_cls-t": 32}


@pytest.fixture(scope="module")
def short_runs(tmp_path_factory):
    return make_short_runs(tmp_path_factory.mktemp("short"), SHORT_RUNS)


@pytest.mark.parametrize("family", list(SHORT_RUNS))
def test_mednext_default_int8_files_run_in_the_browser_as_in_litert(family, short_runs, tmp_path):
    check_in_the_browser(family, *short_runs[family], tmp_path)
