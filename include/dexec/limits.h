/*
 * limits.h - the one table of request limits. The CLI's flags, the
 * engine's request check and the worker's request parser all use these
 * numbers, so a value one layer accepts is never refused by the next.
 * A model may serve less (its own sizes, for instance); it says so in its
 * own error.
 */
#ifndef DEXEC_LIMITS_H
#define DEXEC_LIMITS_H

#include <stdint.h>

/* num_inference_steps: 1..DEXEC_MAX_STEPS (0: the model's default). */
#define DEXEC_MAX_STEPS 1000

/* height and width in pixels: 1..DEXEC_MAX_IMAGE_SIZE (0: the model's). */
#define DEXEC_MAX_IMAGE_SIZE 4096

/* guidance_scale: 0..DEXEC_MAX_GUIDANCE (negative: the model's default).
 * Above DEXEC_GUIDANCE_WARN the CLI warns: such scales give noise. */
#define DEXEC_MAX_GUIDANCE 100.0
#define DEXEC_GUIDANCE_WARN 20

/* num_outputs_per_prompt: 1..DEXEC_MAX_OUTPUTS_PER_PROMPT (0: 1). */
#define DEXEC_MAX_OUTPUTS_PER_PROMPT 64

/* Requests in one `dexec generate` (-b). */
#define DEXEC_MAX_BATCH 10000

/* seed: 0..DEXEC_MAX_SEED (negative: random). Image k of a request uses
 * (seed, k), never seed + k, so every seed in the range is usable; the CLI
 * gives request i the seed SEED + i and refuses a SEED for which that
 * would pass DEXEC_MAX_SEED. */
#define DEXEC_MAX_SEED INT64_MAX

#endif
