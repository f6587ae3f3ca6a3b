// Stands in for CUDA's cuda_bf16.h when kernels/*.cu are compiled for the CPU emulator.
#pragma once
#include "../kernel.h"
