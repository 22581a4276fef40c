package inject

import (
	"bufio"
	"io"

	"k8s.io/apimachinery/pkg/util/intstr"
)

func bufioReader(r io.Reader) *bufio.Reader { return bufio.NewReaderSize(r, 64<<10) }

func intstrFromInt(n int) intstr.IntOrString { return intstr.FromInt32(int32(n)) }
