/* external - being written */
