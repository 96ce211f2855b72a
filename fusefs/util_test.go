package fusefs

import (
	"os"
	"time"
)

type sizeInfo int64

func (s sizeInfo) Size() int64      { return int64(s) }
func (sizeInfo) Name() string       { return "mem" }
func (sizeInfo) Mode() os.FileMode  { return 0o600 }
func (sizeInfo) ModTime() time.Time { return time.Time{} }
func (sizeInfo) IsDir() bool        { return false }
func (sizeInfo) Sys() any           { return nil }
