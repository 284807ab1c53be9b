/* frame.c - being written */
