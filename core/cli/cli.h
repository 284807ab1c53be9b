/* cli.h - the subcommands of the dexec tool. Each returns the exit status
 * (dexec(1) EXIT STATUS): 0 success; CLI_USAGE (2) when the command line or
 * the configuration it names is refused before anything starts (an
 * unknown option, a bad value, a configuration file, --set or engine
 * option that does not load or validate, a file named that cannot be
 * read); CLI_FAILED (1) when the command ran and failed (an engine that
 * could not start, a worker's error, a request the model refuses, a lost
 * image). */
#ifndef DEXEC_CLI_H
#define DEXEC_CLI_H

#include <stdint.h>

#include <dexec/dexec.h>

#define CLI_FAILED 1
#define CLI_USAGE  2

int cmd_plugins(int argc, char **argv);
int cmd_config(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_health(int argc, char **argv);
int cmd_rpc(int argc, char **argv);
int cmd_logs(int argc, char **argv);
int cmd_actors(int argc, char **argv);

/* Loads the configuration for a subcommand: path (may be NULL: $DEXEC_CONFIG
 * or defaults). Prints the error and returns NULL on failure. */
dexec_config *cli_load_config(const char *path);

/* Options shared by the commands that start an engine. */
typedef struct cli_engine_opts {
    const char *config;  /* -c FILE */
    const char *backend; /* --backend */
    const char *device;  /* --device */
    const char *dtype;   /* --dtype */
    const char *num_gpus; /* --num-gpus */
    const char *model;   /* -m */
    const char *set_key[16], *set_val[16]; /* more overrides (e.g. timeouts) */
    int nset;
} cli_engine_opts;

/* Recognises a shared engine option at argv[*i] (advancing *i past its
 * value). Returns 1 if consumed, 0 if not ours, -1 on a missing value. */
int cli_engine_opt(cli_engine_opts *o, int argc, char **argv, int *i);
/* Help lines for the shared options. */
extern const char cli_engine_opts_help[];
/* Loads the config, applies the options and creates the engine. Prints
 * the error and returns NULL on failure, with *exit_status CLI_USAGE when
 * the configuration or an option was refused, CLI_FAILED when the engine
 * could not start; *exit_status 0 on success. */
dexec_engine *cli_open_engine(const cli_engine_opts *o, int *exit_status);
/* The configuration cli_open_engine() starts from: loaded, with the options
 * applied. Prints the error and returns NULL on failure (exit status
 * CLI_USAGE); caller frees. */
dexec_config *cli_engine_config(const cli_engine_opts *o);

/* Writes an 8-bit grey or RGB image as PNG to path (NULL: standard output)
 * with text chunks (pairs of key, value; NULL-terminated): tEXt for ASCII
 * values, iTXt for UTF-8 ones. Returns 0, or -1 with a message in err. */
int cli_write_png(const char *path, const dexec_image *img, const char *const *text, char *err,
                  size_t errlen);
/* The same PNG in memory: *out (caller frees) of *len bytes. Returns 0, or
 * -1 with a message in err. */
int cli_png_encode(const dexec_image *img, const char *const *text, unsigned char **out,
                   size_t *len, char *err, size_t errlen);

int cmd_serve(int argc, char **argv);

/* Refuses, before anything starts, an output file whose directory is
 * missing, not a directory or not writable: prints "WHAT PATH: ..." (what
 * is e.g. "dexec generate: -o") and returns -1; 0 when it can be created. */
int cli_check_out_dir(const char *what, const char *path);
/* The page `dexec serve` answers at / (serve_page.c). */
extern const char serve_page_html[];

#endif
