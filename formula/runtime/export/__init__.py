"""From a model folder to files llama.cpp runs: the GGUF converter, the quantizer, and the
llama.cpp session helpers the evals and tests share."""
