/* cmd_generate.c - `dexec generate` (prompt to PNG, flags as in
 * stable-diffusion.cpp's CLI) and `dexec health`. */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include <dexec/rpc.h>

#include "cli.h"

static void generate_usage(FILE *out)
{
    fprintf(out,
            "Usage: dexec generate -p PROMPT [OPTIONS]\n\n"
            "Generates images and writes them as PNG.\n\n"
            "  -p, --prompt TEXT          what to draw (empty: unconditional)\n"
            "  -n, --negative-prompt TEXT what to steer away from\n"
            "      --steps N              denoising steps (default: the model's)\n"
            "      --cfg-scale F          classifier-free guidance scale (default: the model's)\n"
            "  -s, --seed N               seed; negative picks one at random and prints it\n"
            "                             (default -1)\n"
            "  -W, --width N              width in pixels (default: the model's)\n"
            "  -H, --height N             height in pixels (default: the model's)\n"
            "  -b, --batch-count N        number of images, seeds SEED..SEED+N-1 (default 1)\n"
            "  -o, --output FILE          output PNG (default output.png); with several\n"
            "                             images: FILE-0.png, FILE-1.png, ...\n"
            "      --timeout S            deadline for the whole batch (default timeouts.generate)\n"
            "  -q, --quiet                no progress bar\n"
            "%s",
            cli_engine_opts_help);
}

/* Progress bar state (stderr, only on a terminal). */
typedef struct bar {
    pthread_mutex_t lock;
    int enabled;
    int *steps_done; /* per request */
    int total_steps, nreq;
    double start;
} bar;

static void on_progress(void *user, size_t req, int image, int step, int total)
{
    bar *b = user;
    long done = 0, all;
    int width = 30, fill;

    (void)image;
    if (!b->enabled || req >= (size_t)b->nreq)
        return;
    pthread_mutex_lock(&b->lock);
    b->steps_done[req] = step;
    if (total > b->total_steps)
        b->total_steps = total;
    for (int i = 0; i < b->nreq; i++)
        done += b->steps_done[i];
    all = (long)b->total_steps * b->nreq;
    fill = all > 0 ? (int)(done * width / all) : 0;
    fprintf(stderr, "\r[");
    for (int i = 0; i < width; i++)
        fputc(i < fill ? '=' : (i == fill ? '>' : ' '), stderr);
    fprintf(stderr, "] %ld/%ld steps %.1fs", done, all, dexec_now() - b->start);
    fflush(stderr);
    pthread_mutex_unlock(&b->lock);
}

static int parse_int(const char *opt, const char *s, long lo, long hi, long *out)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || *end != '\0' || end == s || v < lo || v > hi) {
        fprintf(stderr, "dexec generate: %s expects an integer in %ld..%ld, got '%s'\n", opt, lo,
                hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_double(const char *opt, const char *s, double *out)
{
    char *end;

    errno = 0;
    *out = strtod(s, &end);
    if (errno != 0 || *end != '\0' || end == s) {
        fprintf(stderr, "dexec generate: %s expects a number, got '%s'\n", opt, s);
        return -1;
    }
    return 0;
}

static char *output_name(const char *out, int index, int count)
{
    const char *dot = strrchr(out, '.'), *slash = strrchr(out, '/');
    size_t stem = dot != NULL && (slash == NULL || dot > slash) ? (size_t)(dot - out)
                                                                 : strlen(out);
    char *name;

    if (count <= 1)
        return strdup(out);
    name = malloc(strlen(out) + 24);
    if (name != NULL)
        sprintf(name, "%.*s-%d%s", (int)stem, out, index, out + stem);
    return name;
}

/* Value of a long option given as "--opt value" or "--opt=value". */
static const char *optval(int argc, char **argv, int *i, const char *s, const char *l, int *bad)
{
    const char *a = argv[*i];
    size_t n = strlen(l);

    if ((s != NULL && strcmp(a, s) == 0) || strcmp(a, l) == 0) {
        if (*i + 1 >= argc) {
            fprintf(stderr, "dexec generate: option %s needs a value\n", a);
            *bad = 1;
            return NULL;
        }
        return argv[++*i];
    }
    if (strncmp(a, l, n) == 0 && a[n] == '=')
        return a + n + 1;
    return NULL;
}

int cmd_generate(int argc, char **argv)
{
    cli_engine_opts eo = {0};
    dexec_request base;
    const char *output = "output.png", *v;
    long batch = 1, n;
    double timeout_s = 0;
    int quiet = 0, bad = 0, rc = 0, nimages = 0, written = 0;
    int64_t seed = -1;
    dexec_engine *e;
    dexec_request *reqs;
    dexec_output *outs = NULL;
    bar b = {.lock = PTHREAD_MUTEX_INITIALIZER};
    dexec_status st;
    double t0;

    dexec_request_init(&base);
    for (int i = 1; i < argc; i++) {
        int r = cli_engine_opt(&eo, argc, argv, &i);

        if (r < 0)
            return 2;
        if (r > 0)
            continue;
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            generate_usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "-q") == 0 || strcmp(argv[i], "--quiet") == 0) {
            quiet = 1;
        } else if ((v = optval(argc, argv, &i, "-p", "--prompt", &bad)) != NULL) {
            base.prompt = v;
        } else if ((v = optval(argc, argv, &i, "-n", "--negative-prompt", &bad)) != NULL) {
            base.negative_prompt = v;
        } else if ((v = optval(argc, argv, &i, NULL, "--steps", &bad)) != NULL) {
            if (parse_int("--steps", v, 1, 10000, &n) != 0)
                return 2;
            base.num_inference_steps = (int)n;
        } else if ((v = optval(argc, argv, &i, NULL, "--cfg-scale", &bad)) != NULL) {
            if (parse_double("--cfg-scale", v, &base.guidance_scale) != 0)
                return 2;
            if (base.guidance_scale < 0) {
                fprintf(stderr, "dexec generate: --cfg-scale must be >= 0\n");
                return 2;
            }
        } else if ((v = optval(argc, argv, &i, "-s", "--seed", &bad)) != NULL) {
            char *end;

            errno = 0;
            seed = strtoll(v, &end, 10);
            if (errno != 0 || *end != '\0' || end == v) {
                fprintf(stderr, "dexec generate: --seed expects an integer, got '%s'\n", v);
                return 2;
            }
        } else if ((v = optval(argc, argv, &i, "-W", "--width", &bad)) != NULL) {
            if (parse_int("--width", v, 1, 8192, &n) != 0)
                return 2;
            base.width = (int)n;
        } else if ((v = optval(argc, argv, &i, "-H", "--height", &bad)) != NULL) {
            if (parse_int("--height", v, 1, 8192, &n) != 0)
                return 2;
            base.height = (int)n;
        } else if ((v = optval(argc, argv, &i, "-b", "--batch-count", &bad)) != NULL) {
            if (parse_int("--batch-count", v, 1, 10000, &batch) != 0)
                return 2;
        } else if ((v = optval(argc, argv, &i, "-o", "--output", &bad)) != NULL) {
            output = v;
        } else if ((v = optval(argc, argv, &i, NULL, "--timeout", &bad)) != NULL) {
            if (parse_double("--timeout", v, &timeout_s) != 0)
                return 2;
            eo.set_key[eo.nset] = "timeouts.generate";
            eo.set_val[eo.nset++] = v;
        } else {
            if (!bad)
                fprintf(stderr, "dexec generate: unknown option '%s' (see --help)\n", argv[i]);
            return 2;
        }
        if (bad)
            return 2;
    }
    if (seed < 0) {
        uint64_t r = 0;

        if (getrandom(&r, sizeof(r), 0) != (ssize_t)sizeof(r))
            r = (uint64_t)getpid() ^ (uint64_t)(dexec_now() * 1e6);
        seed = (int64_t)(r & 0xffffffffffffULL);
        printf("seed: %" PRId64 "\n", seed);
    }
    reqs = calloc((size_t)batch, sizeof(*reqs));
    b.steps_done = calloc((size_t)batch, sizeof(int));
    if (reqs == NULL || b.steps_done == NULL) {
        fprintf(stderr, "dexec generate: out of memory\n");
        free(reqs);
        free(b.steps_done);
        return 1;
    }
    for (long i = 0; i < batch; i++) {
        reqs[i] = base;
        reqs[i].seed = seed + i;
    }
    e = cli_open_engine(&eo);
    if (e == NULL) {
        free(reqs);
        free(b.steps_done);
        return 1;
    }
    b.enabled = !quiet && isatty(STDERR_FILENO);
    b.nreq = (int)batch;
    b.start = t0 = dexec_now();
    st = dexec_engine_step(e, reqs, (size_t)batch, &outs, on_progress, &b);
    if (b.enabled)
        fprintf(stderr, "\n");
    if (st != DEXEC_OK) {
        fprintf(stderr, "dexec generate: %s\n", dexec_engine_last_error(e));
        rc = 1;
    }
    for (long i = 0; st == DEXEC_OK && i < batch; i++)
        nimages += (int)outs[i].num_images;
    for (long i = 0; st == DEXEC_OK && i < batch; i++) {
        dexec_output *o = &outs[i];
        char seed_s[32], steps_s[16], cfg_s[32];

        if (o->status != DEXEC_OK) {
            fprintf(stderr, "dexec generate: %s\n", o->error != NULL ? o->error : "failed");
            rc = 1;
            continue;
        }
        snprintf(seed_s, sizeof(seed_s), "%" PRId64, o->seed);
        snprintf(steps_s, sizeof(steps_s), "%d", o->steps);
        snprintf(cfg_s, sizeof(cfg_s), "%g", o->guidance_scale);
        for (size_t k = 0; k < o->num_images; k++) {
            const char *text[] = {"prompt", base.prompt != NULL ? base.prompt : "",
                                  "negative_prompt",
                                  base.negative_prompt != NULL ? base.negative_prompt : "",
                                  "seed", seed_s, "steps", steps_s, "guidance_scale", cfg_s,
                                  "Software", "dexec " PACKAGE_VERSION, NULL};
            char err[512], *name = output_name(output, written, nimages);

            if (name == NULL || cli_write_png(name, &o->images[k], text, err, sizeof(err)) != 0) {
                fprintf(stderr, "dexec generate: %s\n", name != NULL ? err : "out of memory");
                rc = 1;
            } else {
                printf("%s: %dx%d, seed %" PRId64 ", %d steps, cfg %g, rank %d, %.2f s\n", name,
                       o->images[k].width, o->images[k].height, o->seed, o->steps,
                       o->guidance_scale, o->rank, o->timings.total_s);
            }
            free(name);
            written++;
        }
    }
    if (st == DEXEC_OK)
        dexec_outputs_free(outs, (size_t)batch);
    dexec_engine_free(e);
    free(reqs);
    free(b.steps_done);
    return rc;
}

int cmd_health(int argc, char **argv)
{
    cli_engine_opts eo = {0};
    dexec_engine *e;
    int rc = 0;

    for (int i = 1; i < argc; i++) {
        int r = cli_engine_opt(&eo, argc, argv, &i);

        if (r < 0)
            return 2;
        if (r > 0)
            continue;
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            printf("Usage: dexec health [OPTIONS]\n\nStarts or connects the deployment's "
                   "workers and checks that every rank answers\nwithin timeouts.health. Exit "
                   "status 0 when healthy, 1 otherwise.\n\n%s",
                   cli_engine_opts_help);
            return 0;
        }
        fprintf(stderr, "dexec health: unknown option '%s' (see --help)\n", argv[i]);
        return 2;
    }
    e = cli_open_engine(&eo);
    if (e == NULL)
        return 1;
    if (dexec_engine_check_health(e) == DEXEC_OK) {
        printf("healthy: %d rank(s) on %s\n", dexec_engine_num_ranks(e), dexec_engine_backend(e));
    } else {
        fprintf(stderr, "dexec health: %s\n", dexec_engine_last_error(e));
        rc = 1;
    }
    dexec_engine_free(e);
    return rc;
}
