"""One primary: per job (session election), per room (room lease), and a dead worker's rooms
re-dispatched to the living (recovery)."""
