"""CrossLMM model: config, modeling, processor; registered with the transformers Auto classes on import."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoProcessor

from crosslmm.model.cache import CrossLMMCache
from crosslmm.model.configuration import CrossLMMConfig
from crosslmm.model.modeling import CrossLMMForCausalLM, CrossLMMModel
from crosslmm.model.processing import CrossLMMProcessor

AutoConfig.register("crosslmm", CrossLMMConfig, exist_ok=True)
AutoModel.register(CrossLMMConfig, CrossLMMModel, exist_ok=True)
AutoModelForCausalLM.register(CrossLMMConfig, CrossLMMForCausalLM, exist_ok=True)
AutoProcessor.register(CrossLMMConfig, CrossLMMProcessor, exist_ok=True)

__all__ = ["CrossLMMCache", "CrossLMMConfig", "CrossLMMForCausalLM", "CrossLMMModel", "CrossLMMProcessor"]
