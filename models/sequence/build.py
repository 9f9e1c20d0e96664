"""The training job: MovieLens's training period -> a trained sequence model, saved and made current."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from models.sequence.model import SequenceConfig
from models.sequence.recommender import SequenceRecommender
from models.sequence.training import TrainReport, user_sequences
from streams.settings import Settings


def train_and_save(settings: Settings, config: SequenceConfig | None = None,
                   progress: bool = True) -> tuple[SequenceRecommender, TrainReport]:
    """Train on MovieLens's training period (the first `train_fraction` of events), save, make current."""
    from models.embeddings import training_ratings
    from streams.movielens import dataset_dir, load_ratings

    config = config or SequenceConfig.from_settings(settings)
    folder = dataset_dir(settings, progress=progress)
    ratings = load_ratings(folder)
    train = training_ratings(ratings, settings.train_fraction)
    recommender, report = SequenceRecommender.fit(user_sequences(train, settings, config.positives_only), config,
                                                  item_ids=catalogue(settings, ratings), progress=progress)
    recommender.meta["train_fraction"] = settings.train_fraction
    recommender.save(settings)
    return recommender, report


def catalogue(settings: Settings, ratings: Iterable[Any]) -> list[str]:
    """Every item a sequence model's vocabulary holds: MovieLens's catalogue and every rated item."""
    from streams.movielens import dataset_dir, load_movies

    return sorted(set(load_movies(dataset_dir(settings, progress=False))) | {r.item_id for r in ratings})
