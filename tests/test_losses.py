"""PartCATSeg's losses: training labels that do not index the training vocabulary are named."""
from __future__ import annotations

import pytest
import torch

from partcatseg.cli.errors import describe_error
from partcatseg.modeling.losses import partcatseg_losses

NP, NO, NC = 5, 3, 9  # generalized parts, objects, object-specific classes
IGNORE = 255


def _case(seed: int):
    g = torch.Generator().manual_seed(seed)
    po = torch.randn(2, NP + NO + 1, 6, 7, generator=g) * 3
    sp = torch.randn(2, NC + 1, 6, 7, generator=g) * 3
    targets = torch.randint(0, NC, (2, 24, 28), generator=g)
    objs = torch.randint(0, NO + 1, (2, 24, 28), generator=g)  # NO = a novel object (not in the part table)
    targets[:, :5] = IGNORE
    objs[:, :3] = IGNORE
    text_to_part = torch.full((IGNORE + 1,), IGNORE)
    text_to_part[:NC] = torch.randint(0, NP, (NC,), generator=g)
    obj_to = torch.full((IGNORE + 1,), IGNORE)
    obj_to[:NO] = torch.arange(NO)
    costs = {"part_obj_cost": torch.randn(2, 4, NP + NO + 1, 6, 7, generator=g),
             "specific_part_cost": torch.randn(2, 4, NC + 1, 6, 7, generator=g)}
    return po, sp, costs, targets, objs, text_to_part, obj_to


@pytest.mark.parametrize("what", ["object-specific part", "generalized part", "object"])
def test_a_label_outside_the_vocabulary_is_named(what):
    po, sp, costs, targets, objs, t2p, o2o = _case(4)
    if what == "object-specific part":  # one id past the object-specific classes, mapped to a part
        targets[0, 10, 10], t2p[NC], bad, count = NC, 0, NC, NC
    elif what == "generalized part":  # a class mapped to a part id past the generalized parts
        t2p[int(targets[1, 20, 20])], bad, count = NP + 2, NP + 2, NP
    else:  # an object id mapped past the objects
        objs[0, 12, 12], o2o[NO], bad, count = NO, NO + 1, NO + 1, NO
    with pytest.raises(ValueError, match=f"^{what} label {bad} in the training targets is outside the {count} "
                                         f"{what} classes of the training vocabulary$") as info:
        partcatseg_losses(po, sp, costs, targets, objs, text_to_part=t2p, obj_to_obj_in_part=o2o,
                          class_to_object=torch.arange(NC) % NO, num_parts=NP, num_objects=NO,
                          ignore_value=IGNORE, ignore_label=IGNORE)
    # train_net.py and the other command lines report it in one line, exit status 2 (no traceback)
    assert describe_error(info.value, "train_net.py") == (2, f"train_net.py: error: {info.value}")
    # the batch as drawn (every label in range) trains
    po, sp, costs, targets, objs, t2p, o2o = _case(4)
    out = partcatseg_losses(po, sp, costs, targets, objs, text_to_part=t2p, obj_to_obj_in_part=o2o,
                            class_to_object=torch.arange(NC) % NO, num_parts=NP, num_objects=NO,
                            ignore_value=IGNORE, ignore_label=IGNORE)
    assert torch.isfinite(out["loss_sem_seg"]) and out["loss_sem_seg"] > 0
