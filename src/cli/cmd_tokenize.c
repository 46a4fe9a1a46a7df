/* placeholder until the tokenize command lands (being written now) */
#include <stdio.h>
#include "commands.h"
int cmd_tokenize(int argc, char **argv) { (void)argc; (void)argv; fprintf(stderr, "ergo tokenize: not built yet\n"); return 1; }
