/* cli.h - the subcommands of the dexec tool. Each returns the exit status:
 * 0 success, 1 failure, 2 usage error. */
#ifndef DEXEC_CLI_H
#define DEXEC_CLI_H

#include <stdint.h>

#include <dexec/dexec.h>

int cmd_plugins(int argc, char **argv);
int cmd_config(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_health(int argc, char **argv);
int cmd_rpc(int argc, char **argv);
int cmd_actors(int argc, char **argv);

/* Loads the configuration for a subcommand: path (may be NULL: $DEXEC_CONFIG
 * or defaults). Prints the error and returns NULL on failure. */
dexec_config *cli_load_config(const char *path);

/* Writes an 8-bit grey or RGB image as PNG with tEXt chunks (pairs of
 * key, value; NULL-terminated). Returns 0, or -1 with a message in err. */
int cli_write_png(const char *path, const dexec_image *img, const char *const *text, char *err,
                  size_t errlen);

#endif
