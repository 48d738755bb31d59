"""ConvScope's module library: blocks, their registry and the spec builder."""
from blocks.builder import LayerInfo, Network, build, load_spec_text, normalize_spec, to_spec
from blocks.registry import BlockInfo, Param, SpecError, get_block, list_blocks

__all__ = ["BlockInfo", "LayerInfo", "Network", "Param", "SpecError", "build", "get_block",
           "list_blocks", "load_spec_text", "normalize_spec", "to_spec"]
