// Stands in for CUDA's cuda_fp16.h when kernels/*.cu are compiled for the CPU emulator.
#pragma once
#include "../kernel.h"
