/* conn.c - being written */
