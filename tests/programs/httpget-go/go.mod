module httpget

go 1.19
