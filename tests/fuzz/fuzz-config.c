/*
 * fuzz-config.c - libFuzzer target for the configuration loader: the input
 * is the text of a configuration file. It is parsed from memory
 * (dexec_config_parse) and, through a file, by dexec_config_load (which
 * reads it, refuses NUL bytes and large files, and applies the
 * environment); a configuration that loads must dump to text that parses
 * again (the dump's promise in <dexec/dexec.h>).
 *
 *   make -C tests fuzz-run FUZZ_TARGET=config FUZZ_SECONDS=180   (needs clang)
 *
 * Plugins named by the input are searched only in an empty directory, so
 * the target never maps a file the input names by bare name.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <dexec/dexec.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static char path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char dir[] = "/tmp/dexec-fuzz-config-XXXXXX";

    (void)argc, (void)argv;
    if (mkdtemp(dir) == NULL)
        abort();
    setenv("DEXEC_PLUGIN_PATH", dir, 1);
    unsetenv("DEXEC_CONFIG");
    snprintf(path, sizeof(path), "%s/fuzz.conf", dir);
    dexec_log_set_level(DEXEC_LOG_ERROR);
    return 0;
}

static void check_dump(dexec_config *cfg)
{
    char err[1024];
    char *text = dexec_config_dump(cfg);
    dexec_config *back = NULL;

    if (text == NULL)
        abort();
    if (dexec_config_parse(text, "dump", &back, err, sizeof(err)) != DEXEC_OK) {
        fprintf(stderr, "the dump does not parse again: %s\n%s\n", err, text);
        abort();
    }
    dexec_config_free(back);
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[1024];
    char *text = malloc(size + 1);
    dexec_config *cfg = NULL;
    FILE *f;

    if (text == NULL)
        return 0;
    if (size > 0)
        memcpy(text, data, size);
    text[size] = '\0';
    if (dexec_config_parse(text, "fuzz", &cfg, err, sizeof(err)) == DEXEC_OK) {
        check_dump(cfg);
        dexec_config_free(cfg);
        cfg = NULL;
    }
    free(text);

    f = fopen(path, "we");
    if (f == NULL)
        abort();
    if (size > 0 && fwrite(data, 1, size, f) != size)
        abort();
    fclose(f);
    if (dexec_config_load(path, &cfg, err, sizeof(err)) == DEXEC_OK) {
        check_dump(cfg);
        dexec_config_free(cfg);
    }
    return 0;
}
