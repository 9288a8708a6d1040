import torch

from pytest_llem.engines import RequestOutput, count_output_tokens

EOS = 2
PAD = 0


def test_full_length_sequences_count_every_token() -> None:
    new = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    assert count_output_tokens(new, [EOS]) == [4, 4]


def test_early_eos_counts_through_eos_and_ignores_padding_after_it() -> None:
    new = torch.tensor([[5, EOS, PAD, PAD], [5, 6, 7, EOS], [EOS, PAD, PAD, PAD]])
    assert count_output_tokens(new, [EOS]) == [2, 4, 1]


def test_pad_equal_to_eos_still_counts_once() -> None:
    # SmolLM2 pads with its EOS id: the first EOS ends the sequence
    new = torch.tensor([[5, 6, EOS, EOS, EOS]])
    assert count_output_tokens(new, [EOS]) == [3]


def test_any_of_several_eos_ids_ends_a_sequence() -> None:
    new = torch.tensor([[5, 99, 7], [5, 6, EOS]])
    assert count_output_tokens(new, [EOS, 99]) == [2, 3]


def test_request_output_latency_and_forward_tokens() -> None:
    out = RequestOutput(
        output_tokens=4, input_tokens=10, first_token_s=0.4, token_times_s=(0.4, 0.6, 0.8, 1.0), e2e_s=1.0
    )
    assert out.forward_tokens == 10 + 3
    assert out.time_per_output_token_s == (1.0 - 0.4) / 3
    assert out.inter_token_latencies_s == [0.6 - 0.4, 0.8 - 0.6, 1.0 - 0.8]
