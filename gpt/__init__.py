"""A minimal GPT-2 in PyTorch, written to be read. Knows nothing about LoRA."""

from gpt.attention import FusedMultiHeadAttention, MultiHeadAttention, causal_attention, fuse_qkv, split_qkv
from gpt.config import GPT2_CHECKPOINT_SETTINGS, PRESETS, GPTConfig
from gpt.generate import generate, generate_text
from gpt.model import FeedForward, GPTModel, LayerNorm, TransformerBlock, convert_attention, convert_state_dict
from gpt.params import count_parameters, parameter_summary, parameter_table, tied_parameters
from gpt.tokenizer import END_OF_TEXT_ID, get_tokenizer, text_to_token_ids, token_ids_to_text
from gpt.weights import load_gpt2, load_gpt2_state_dict
