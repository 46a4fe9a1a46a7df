/* placeholder until the preprocess command lands (being written now) */
#include <stdio.h>
#include "commands.h"
int cmd_preprocess(int argc, char **argv) { (void)argc; (void)argv; fprintf(stderr, "ergo preprocess: not built yet\n"); return 1; }
