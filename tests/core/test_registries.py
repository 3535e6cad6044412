"""Name -> constructor tables: unknown names are errors that list the valid ones."""

import pytest

from boltzkit import experiments, samplers, targets


@pytest.mark.parametrize(
    "lookup, valid",
    [(targets.get, targets.names()), (samplers.module, samplers.names()),
     (experiments.get, experiments.names())],
)
def test_unknown_name_lists_valid_ones(lookup, valid):
    with pytest.raises(KeyError) as err:
        lookup("no-such-thing")
    assert all(name in str(err.value) for name in valid)


def test_target_names_cover_the_reference_table():
    required = {"gmm40", "two-modes", "many-well-32", "funnel-10", "dw4", "lj13", "lj55",
                "lj13-eacf", "tempered-gmm-2d", "multi-well-5d", "phi4"}
    assert required <= set(targets.names())
