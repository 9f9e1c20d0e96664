"""`explorer backfill` after `explorer clusters build` with another cluster count: the new version's counts match
the reference for the new clusters, and the serving version switches only when the backfill is done."""

import os
import subprocess
import sys

import pytest

from models.clusters import build_clusters, load_current, load_serving, set_serving
from models.reference import reference_counts
from streams.movielens import load_ratings
from streams.replay import publish_events
from streams.state_reader import read_state_counts
from tests.harness import settings_env

pytestmark = pytest.mark.integration


def test_backfill_after_a_cluster_rebuild_matches_the_reference(isolated_settings, movielens_dir, tmp_path):
    settings = isolated_settings.model_copy(update={"data_dir": tmp_path / "data", "movielens_dir": movielens_dir})
    old = build_clusters(settings)
    set_serving(settings, old.version)
    ratings = load_ratings(movielens_dir)[:30_000]
    publish_events(settings, (r.to_event() for r in ratings))

    new = build_clusters(settings, count=25)
    assert new.version != old.version and load_current(settings).version == new.version
    assert load_serving(settings).version == old.version  # building alone does not switch what is served

    env = {**os.environ, **settings_env(settings)}
    result = subprocess.run([sys.executable, "-m", "streams.cli", "backfill", "--from", "beginning"],
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"backfilled 30,000 events into {new.version}" in result.stdout

    assert load_serving(settings).version == new.version
    expected = reference_counts(ratings, new.cluster_of, settings)
    actual = read_state_counts(settings, new.version)
    assert actual.total and actual.total == expected.total
    assert actual.daily == expected.daily and actual.trends == expected.trends
