package broker

// RecoverPanicsForTest exposes the panic-recovering interceptor to tests.
var RecoverPanicsForTest = recoverPanics
