"""The training job's pure pieces: source oversampling and its argument parsing."""

import pytest

from adapters.train import oversample, parse_repeats


def test_parse_repeats_reads_source_factors() -> None:
    assert parse_repeats(["arc_easy=3", " sciq = 2"]) == {"arc_easy": 3, "sciq": 2}


@pytest.mark.parametrize("spec", ["arc_easy", "=3", "arc_easy=0", "arc_easy=-1", "arc_easy=x"])
def test_parse_repeats_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(ValueError, match="SOURCE=N"):
        parse_repeats([spec])


def test_oversample_repeats_only_listed_sources_in_order() -> None:
    records = [{"source": "triviaqa", "i": 0}, {"source": "arc_easy", "i": 1}, {"source": "nq_open", "i": 2}]
    out = oversample(records, {"arc_easy": 3})
    assert [r["i"] for r in out] == [0, 1, 1, 1, 2]


def test_oversample_without_repeats_is_identity() -> None:
    records = [{"source": None}, {"source": "x"}]
    assert oversample(records, {}) == records
