"""papo.dynamic_sampling: the keep rule, the refill pass and the batch rebuilt from several draws."""

import pytest
import torch

from papo.dynamic_sampling import RefillPass, gather_rows, informative_groups, row_piece

PAD = 7


def test_keep_rule_is_strictly_between_the_bounds():
    # groups of 4: all right, all wrong, half, 1/4
    accuracy = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 1, 0, 1, 0, 0, 0], dtype=torch.float)
    assert informative_groups(accuracy, 4).tolist() == [False, False, True, True]


def test_a_draw_without_informative_groups_is_kept_whole():
    accuracy = torch.tensor([1.0, 1.0, 0.0, 0.0])
    assert informative_groups(accuracy, 2).tolist() == [True, True]


def test_refill_pass_is_without_replacement_and_reshuffled_per_epoch():
    refill = RefillPass(seed=3, size=5)
    first, second = refill.next_indices(5), refill.next_indices(5)
    assert sorted(first) == sorted(second) == list(range(5))
    assert first != second  # a new permutation for the second epoch (seeded, so this is fixed)
    assert RefillPass(seed=3, size=5).next_indices(10) == first + second  # same seed, same pass


def test_refill_pass_resumes_where_it_was_saved(tmp_path):
    refill = RefillPass(seed=1, size=6)
    refill.next_indices(8)  # into the second epoch
    refill.save(tmp_path)
    expected = refill.next_indices(7)
    resumed = RefillPass(seed=1, size=6)
    resumed.load(tmp_path)
    assert (resumed.epoch, resumed.cursor) == (2, 2)
    assert resumed.next_indices(7) == expected
    untouched = RefillPass(seed=1, size=6)
    untouched.load(tmp_path / "no-checkpoint-here")
    assert (untouched.epoch, untouched.cursor) == (0, 0)


def _draw(prompt_lengths: list[int], completion_lengths: list[int]) -> dict:
    """A generation batch as TRL returns it: left-padded prompts, right-padded completions, token types
    over prompt + completion (zeros for the completion), per-sample image lists."""
    rows = len(prompt_lengths)
    width_p, width_c = max(prompt_lengths), max(completion_lengths)
    prompt_ids = torch.full((rows, width_p), PAD)
    prompt_mask = torch.zeros(rows, width_p, dtype=torch.long)
    token_types = torch.zeros(rows, width_p + width_c, dtype=torch.long)
    completion_ids = torch.zeros(rows, width_c, dtype=torch.long)
    completion_mask = torch.zeros(rows, width_c, dtype=torch.long)
    for r, (lp, lc) in enumerate(zip(prompt_lengths, completion_lengths, strict=True)):
        prompt_ids[r, width_p - lp :] = torch.arange(100, 100 + lp)
        prompt_mask[r, width_p - lp :] = 1
        token_types[r, width_p - lp : width_p - lp + 2] = 1  # two image tokens at the prompt's start
        completion_ids[r, :lc] = torch.arange(200, 200 + lc)
        completion_mask[r, :lc] = 1
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "mm_token_type_ids": token_types,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.arange(rows, dtype=torch.float),
        "pixel_values": [torch.full((2, 3), float(r)) for r in range(rows)],
        "num_items_in_batch": completion_mask.sum(),
    }


def _check_row(merged: dict, row: int, prompt_length: int, completion_length: int) -> None:
    width_p = merged["prompt_ids"].size(1)
    assert merged["prompt_mask"][row].sum() == prompt_length
    assert merged["prompt_ids"][row, width_p - prompt_length :].tolist() == list(
        range(100, 100 + prompt_length)
    )
    assert (merged["prompt_ids"][row, : width_p - prompt_length] == PAD).all()
    assert merged["completion_ids"][row, :completion_length].tolist() == list(
        range(200, 200 + completion_length)
    )
    # the token types line up with prompt + completion column by column (what M-RoPE indexes them by)
    types = merged["mm_token_type_ids"][row]
    assert types.size(0) == width_p + merged["completion_ids"].size(1)
    assert types[width_p - prompt_length : width_p - prompt_length + 2].tolist() == [1, 1]
    assert types.sum() == 2


def test_rows_of_draws_with_different_prompt_and_completion_widths_line_up():
    # draw A: wide prompts, short completions; draw B: short prompts, long completions. The merged
    # token types must have exactly prompt width + completion width columns (a draw that is widest
    # overall is not the widest on either side: TRL's forward then indexes them by the attention mask).
    a = _draw([9, 6], [3, 2])
    b = _draw([4, 5], [8, 5])
    merged = gather_rows([(a, 0), (b, 0), (b, 1), (a, 1)], pad_token_id=PAD)
    assert merged["prompt_ids"].shape == (4, 9) and merged["completion_ids"].shape == (4, 8)
    attention = torch.cat([merged["prompt_mask"], merged["completion_mask"]], dim=1)
    assert merged["mm_token_type_ids"].shape == attention.shape
    for row, (lp, lc) in enumerate([(9, 3), (4, 8), (5, 5), (6, 2)]):
        _check_row(merged, row, lp, lc)
    assert merged["advantages"].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert [p[0, 0].item() for p in merged["pixel_values"]] == [0.0, 0.0, 1.0, 1.0]
    assert "num_items_in_batch" not in merged  # the caller recomputes the token count


def test_row_piece_round_trips_through_gather_rows():
    draw = _draw([3, 5, 4], [2, 6, 1])
    pieces = [(row_piece(draw, r, "cpu"), 0) for r in range(3)]
    merged = gather_rows(pieces, pad_token_id=PAD)
    for key in ("prompt_ids", "prompt_mask", "mm_token_type_ids", "completion_ids", "completion_mask"):
        assert torch.equal(merged[key], draw[key]), key


def test_token_types_of_an_unexpected_width_are_refused():
    draw = _draw([3], [2])
    draw["mm_token_type_ids"] = draw["mm_token_type_ids"][:, :4]
    with pytest.raises(ValueError, match="mm_token_type_ids has 4 columns"):
        gather_rows([(draw, 0)], pad_token_id=PAD)
