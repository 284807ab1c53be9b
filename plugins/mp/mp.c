/* mp - being written */
