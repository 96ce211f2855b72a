package cli

import "strconv"

// exitStatus ends veil with a program's status, printing nothing.
type exitStatus int

func (e exitStatus) Error() string { return "exit status " + strconv.Itoa(int(e)) }
